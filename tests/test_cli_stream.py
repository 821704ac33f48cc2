"""`musicgen-local predict --stream`: the output file grows while the request generates."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import soundfile

from tests.audio_helpers import generate, wav_header

DURATION = 10  # long enough on tiny weights (seconds of decoding) to look at the file mid-way


@pytest.mark.slow
def test_stream_writes_a_growing_wav_then_the_final_file(tiny_weights, engine, tmp_path):
    out = tmp_path / "song.wav"
    env = dict(
        os.environ,
        MUSICGEN_WEIGHTS=str(tiny_weights),
        MUSICGEN_DEVICES="cpu",
        MUSICGEN_STREAM_SECONDS="0.5",
        MUSICGEN_DATA=str(tmp_path / "data"),
    )
    args = [
        "predict",
        "-i",
        "prompt=lofi beat",
        "-i",
        f"duration={DURATION}",
        "-i",
        "model_version=large",
        "-i",
        "seed=11",
        "-o",
        str(out),
        "--stream",
    ]
    log = (tmp_path / "data").mkdir() or (tmp_path / "data" / "stderr.txt").open("w+")  # a pipe would fill up
    proc = subprocess.Popen(
        [sys.executable, "-m", "musicgen_local.cli", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    seen = []  # frames a reader found in the file while the CLI was still generating
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if out.exists():
            try:
                seen.append(soundfile.info(str(out)).frames)
            except RuntimeError:  # only in the instant the file is created, before its header is written
                pass
        time.sleep(0.05)
    stdout, _ = proc.communicate(timeout=60)
    stderr = (tmp_path / "data" / "stderr.txt").read_text()
    assert proc.returncode == 0, stderr
    growing = [f for f in seen if 0 < f < DURATION * 32000]
    assert len(set(growing)) >= 3, seen  # audio was readable before the end, more and more of it
    assert growing == sorted(growing) and all(f % 16000 == 0 for f in growing)  # whole 0.5 s segments
    assert "segment 0: 0.00 s" in stderr and f"segment {2 * DURATION - 1}: {DURATION - 0.5:.2f} s" in stderr
    assert stdout.strip() == f"{out} ({DURATION:.2f} s, 1 ch, 32000 Hz) seed=11"
    # the final file is what the same request gives without --stream: normalised, 16-bit
    assert wav_header(out)["bits"] == 16
    expected = generate(engine, prompt="lofi beat", duration=DURATION, model_version="large", seed=11)
    assert out.read_bytes() == expected.audio
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "song.wav"]  # no temporary file left


def test_a_stream_that_fails_midway_leaves_no_file(tmp_path, monkeypatch):
    import numpy as np

    import musicgen_local.engine
    from musicgen_local import audio, cli
    from musicgen_local.engine.api import Audio, Failed

    out, seen = tmp_path / "song.wav", []

    def events():  # a segment arrives, then the request fails
        yield Audio(0, 0.0, audio.float_wav(np.full((16000, 1), 0.25, "float32"), 32000), 32000, 1, 16000)
        seen.append(soundfile.info(str(out)).frames)
        yield Failed("the device ran out of memory")

    class OneRun:
        def submit(self, request, stream):
            return events()

        def close(self):
            pass

    monkeypatch.setattr(musicgen_local.engine, "load_engine", lambda settings: OneRun())
    code = cli.main(["predict", "-i", "prompt=x", "--stream", "-o", str(out)])
    assert code == 1 and seen == [16000] and not out.exists()
