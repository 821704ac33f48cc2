"""`musicgen-local predict` as a user runs it."""

import os
import subprocess
import sys

import pytest

from tests.audio_helpers import read_wav


def cli(*args, weights, cwd):
    env = dict(os.environ, MUSICGEN_WEIGHTS=str(weights), MUSICGEN_DEVICE="cpu")
    return subprocess.run(
        [sys.executable, "-m", "musicgen_local.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_predict_writes_the_file_and_prints_path_and_seed(tiny_weights, tmp_path):
    out = tmp_path / "song.wav"
    done = cli(
        "predict",
        "-i",
        "prompt=lofi beat",
        "-i",
        "duration=1",
        "-i",
        "model_version=melody-large",
        "-i",
        "seed=9",
        "-o",
        str(out),
        weights=tiny_weights,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{out} (1.00 s, 1 ch, 32000 Hz) seed=9"
    assert read_wav(out)[0].shape == (1, 32000)
    assert list(tmp_path.iterdir()) == [out]  # no scratch left behind


@pytest.mark.slow
def test_predict_errors_are_messages_not_tracebacks(tiny_weights, tmp_path):
    done = cli("predict", "-i", "duration=1", weights=tiny_weights, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().endswith("error: Must provide either prompt or input_audio")
    done = cli("predict", "-i", "prompt=x", "-i", "output_format=ogg", weights=tiny_weights, cwd=tmp_path)
    assert done.returncode == 2 and "error: output_format: Input should be 'wav' or 'mp3'" in done.stderr
    done = cli("predict", "-i", "prompt=x", weights=tmp_path / "nothing", cwd=tmp_path)
    assert done.returncode == 1 and "`musicgen-local weights fetch stereo-melody-large`" in done.stderr


@pytest.mark.slow
def test_loop_takes_the_loopers_inputs_and_says_what_it_tried(tiny_weights, tmp_path):
    """`musicgen-local loop`: the looper's schema (a 422-like refusal names the field); on the tiny model's noise
    the pipeline finds no tempo to lock to and says what it tried (tests/looper has loops made of known beats)."""
    refused = cli("loop", "-i", "prompt=drums", "-i", "bpm=500", weights=tiny_weights, cwd=tmp_path)
    assert refused.returncode == 2 and "error: bpm:" in refused.stderr
    done = cli(
        "loop", "-i", "prompt=drums", "-i", "bpm=120", "-i", "variations=1", "-i", "max_duration=2", "-i", "seed=4",
        "-o", str(tmp_path / "loops"), weights=tiny_weights, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode != 0 and "Failed to generate a loop in the requested 120 bpm" in done.stderr
