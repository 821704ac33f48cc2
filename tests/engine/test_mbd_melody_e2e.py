"""MBD and separate-once melody through the engine's public interface, on tiny weights."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from musicgen_local import weights as W
from musicgen_local.engine import load_engine
from musicgen_local.errors import WeightsMissingError
from tests.audio_helpers import generate, wav_bytes, write_tone

LM_VERSIONS = ["stereo-melody-large", "stereo-large", "melody-large", "large"]


def run(engine, _out_dir, **inputs):
    return generate(engine, **inputs)


@pytest.mark.parametrize("model_version", LM_VERSIONS)
@pytest.mark.slow
def test_mbd_on_every_lm_variant(engine, tmp_path, model_version):
    channels = 2 if model_version.startswith("stereo") else 1
    extra = {"input_audio": str(write_tone(tmp_path / "m.wav", 2.0, channels=2))} if "melody" in model_version else {}
    plain = run(engine, tmp_path / "plain", model_version=model_version, duration=1, seed=5, **extra)
    mbd = run(
        engine, tmp_path / "mbd", model_version=model_version, duration=1, seed=5, multi_band_diffusion=True, **extra
    )
    wav, sr = wav_bytes(mbd.audio)
    assert (sr, wav.shape) == (32000, (channels, 32000))
    assert (mbd.channels, mbd.num_samples) == (channels, 32000)
    assert not np.array_equal(wav, wav_bytes(plain.audio)[0])  # decoded by MBD, not EnCodec


@pytest.mark.parametrize("channels", [1, 2])
def test_encode_decode_with_mbd(engine, tmp_path, channels):
    clip = write_tone(tmp_path / "in.wav", 2.0, sr=44100, channels=channels)
    inputs = {"model_version": "encode-decode", "prompt": None, "input_audio": str(clip), "continuation_end": 1}
    plain = run(engine, tmp_path / "plain", **inputs)
    mbd = run(engine, tmp_path / "mbd", multi_band_diffusion=True, **inputs)
    wav, sr = wav_bytes(mbd.audio)
    assert (sr, wav.shape) == (32000, (channels, 32000))
    assert not np.array_equal(wav, wav_bytes(plain.audio)[0])


def test_mbd_is_loaded_once_across_predictions(settings, tmp_path):
    engine = load_engine(settings.with_(warmup="none"))
    try:
        run(engine, tmp_path / "a", model_version="large", duration=1, multi_band_diffusion=True)
        run(engine, tmp_path / "b", model_version="stereo-large", duration=1, multi_band_diffusion=True)
        assert engine.health()["devices"][0]["mbd_loads"] == 1
    finally:
        engine.close()


@pytest.mark.parametrize("absent", [*W.MBD_FILES, W.HTDEMUCS_FILES[1]], ids=str)
def test_missing_mbd_or_demucs_file_is_a_clear_error(settings, tmp_path, absent):
    shutil.copytree(settings.weights_dir / "hub", tmp_path / "hub")
    W.cached_path(tmp_path, absent).unlink()
    engine = load_engine(settings.with_(weights_dir=tmp_path, warmup="none"))
    start = time.monotonic()
    try:
        with pytest.raises(WeightsMissingError, match=str(absent)):
            run(engine, tmp_path / "out", model_version="melody-large", duration=1, multi_band_diffusion=True)
    finally:
        engine.close()
    assert time.monotonic() - start < 10


@pytest.mark.slow
def test_melody_past_30s_is_separated_once(engine, tmp_path, separations):
    melody = write_tone(tmp_path / "m.wav", 4.0, channels=2)
    result = run(engine, tmp_path, model_version="stereo-melody-large", input_audio=str(melody), duration=31, seed=2)
    assert result.num_samples == 31 * 32000 and result.channels == 2
    assert len(separations) == 1  # audiocraft's own loop separates once per 30 s window: 2 here
