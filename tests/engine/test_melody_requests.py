"""Melody conditioning as a user sees it: the melody reaches the model, and the crop applies to it."""

import hashlib

import numpy as np
import pytest
import soundfile

from musicgen_local.errors import UserError
from tests.audio_helpers import generate, write_tone


def _audio_sha(engine, melody, **extra):
    result = generate(
        engine,
        model_version="melody-large",
        prompt="jazz",
        duration=1,
        seed=21,
        input_audio=str(melody),
        normalization_strategy="peak",
        **extra,
    )
    return hashlib.sha256(result.audio).hexdigest()


@pytest.mark.slow
def test_the_melody_changes_the_music_under_a_fixed_seed(engine, tmp_path):
    # (the tiny htdemucs maps 220 Hz and 440 Hz to different chroma; see testing/tiny.py)
    low, high = write_tone(tmp_path / "low.wav", 2.0, freq=220), write_tone(tmp_path / "high.wav", 2.0, freq=440)
    assert _audio_sha(engine, low) == _audio_sha(engine, low)
    assert _audio_sha(engine, low) != _audio_sha(engine, high)


def test_the_crop_applies_to_the_melody(engine, tmp_path):
    sr = 32000
    t = np.arange(sr) / sr
    halves = [0.5 * np.sin(2 * np.pi * f * t) for f in (220, 440)]
    both = tmp_path / "both.wav"
    soundfile.write(str(both), np.concatenate(halves), sr, subtype="FLOAT")
    first = tmp_path / "first.wav"
    soundfile.write(str(first), halves[0], sr, subtype="FLOAT")
    cropped = _audio_sha(engine, both, continuation_start=0, continuation_end=1)
    assert cropped == _audio_sha(engine, first)  # cropping = conditioning on the cropped clip
    assert cropped != _audio_sha(engine, both, continuation_start=1, continuation_end=2)


@pytest.mark.parametrize("model_version", ["large", "stereo-large"])
def test_text_only_models_refuse_a_melody_with_replicates_message(engine, tmp_path, model_version):
    melody = write_tone(tmp_path / "m.wav", 1.0)
    with pytest.raises(UserError) as exc:
        generate(engine, model_version=model_version, prompt="x", input_audio=str(melody))
    assert str(exc.value) == (
        "`stereo-large` and `large` model does not support melody input. Set "
        "`model_version='stereo-melody-large'` or `model_version='melody-large'` to condition on audio input."
    )
