"""Melody separated once per request: same conditioning as audiocraft for one window, one htdemucs
run for many windows."""

from __future__ import annotations

import random

import pytest
import torch

from musicgen_local import weights as W
from musicgen_local.engine import melody as M

SR = 32000


@pytest.fixture(scope="module", params=["melody-large", "stereo-melody-large"])
def model(request, tiny_weights):
    from audiocraft.models import MusicGen, loaders

    repo = W.lm_repo(request.param)
    return MusicGen(request.param, loaders.load_compression_model(repo), loaders.load_lm_model(repo))


def _melody(model, seconds: float, seed: int = 0) -> torch.Tensor:
    """[1, C, T] at 32 kHz with the model's channel count: a few notes plus noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    notes = 220.0 * 2 ** (torch.randint(0, 12, (8,), generator=g) / 12)
    freq = notes[(t * 2).long() % 8]
    wav = 0.4 * torch.sin(2 * torch.pi * freq * t) + 0.05 * torch.randn(t.shape, generator=g)
    return wav.expand(model.audio_channels, -1)[None].clone()


def _embedding(model, condition) -> torch.Tensor:
    """What the LM receives for the melody: the conditioner's output for one description + melody."""
    from audiocraft.modules.conditioners import ConditioningAttributes

    attributes = [ConditioningAttributes(text={"description": "piano"}, wav={"self_wav": condition})]
    provider = model.lm.condition_provider
    return provider(provider.tokenize(attributes))["self_wav"][0]  # [1, chroma_len, dim]


def _audiocraft_condition(model, wav):
    attributes, _ = model._prepare_tokens_and_attributes(["piano"], None, [wav[0]])
    return attributes[0].wav["self_wav"]


@pytest.fixture
def chroma_inputs(model, monkeypatch):
    """What the conditioner computes its chroma from (the stems), call by call."""
    conditioner = M.stem_conditioner(model)
    seen, original = [], conditioner._extract_chroma
    monkeypatch.setattr(conditioner, "_extract_chroma", lambda wav: seen.append(wav.clone()) or original(wav))
    return seen


def test_separated_once_gives_audiocrafts_conditioning_for_one_window(model, separations, chroma_inputs):
    from audiocraft.modules.conditioners import WavCondition

    wav = _melody(model, 3.0)
    random.seed(0)  # htdemucs' random time shift (apply_model shifts=1) comes from `random`
    expected = _embedding(model, _audiocraft_condition(model, wav))
    assert len(separations) == 1

    random.seed(0)
    stems = M.separate(model, wav)  # [1, 1, T]
    prepared = WavCondition(stems, torch.tensor([stems.shape[-1]]), [SR], [None], [None])
    with M.stems_precomputed(model):
        got = _embedding(model, prepared)
    assert len(separations) == 2  # the separation above, none inside
    assert stems.shape == (1, 1, wav.shape[-1])
    assert torch.allclose(chroma_inputs[0], stems, atol=1e-6)  # audiocraft's own stems
    assert torch.equal(chroma_inputs[1], stems)  # taken as they are
    assert torch.allclose(got, expected, atol=1e-6)
    # Without the bypass the conditioner would separate the stems a second time.
    _embedding(model, prepared)
    assert len(separations) == 3 and not torch.allclose(chroma_inputs[2], stems, atol=1e-3)


def test_windows_tile_the_separated_melody_as_audiocraft_tiles_the_raw_one(model):
    melody = M.separated_melody(model, _melody(model, 10.0))
    stems = melody.stems_for(model)
    length, window = stems.shape[-1], int(model.max_duration * SR)
    for offset_s in (0.0, 18.0, 36.0):
        condition = melody.condition_for_window(model, offset_s)
        positions = torch.arange(int(offset_s * SR), int(offset_s * SR) + window)
        assert condition.wav.shape == (1, 1, window)
        assert torch.equal(condition.wav, stems[..., positions % length])
        assert condition.length.tolist() == [window] and condition.sample_rate == [SR]


def test_many_windows_run_the_separation_once(model, separations):
    """Three LM windows (as a 66 s request has), conditions from one SeparatedMelody."""
    from audiocraft.modules.conditioners import ConditioningAttributes

    melody = M.separated_melody(model, _melody(model, 5.0))
    attributes = [ConditioningAttributes(text={"description": "piano"})]
    for offset_s in (0.0, 18.0, 36.0):
        attributes[0].wav["self_wav"] = melody.condition_for_window(model, offset_s)
        with melody.decoding(model):
            tokens = model.lm.generate(None, attributes, max_gen_len=5, use_sampling=True, top_k=250, cfg_coef=3.0)
        assert tokens.shape == (1, model.lm.num_codebooks, 5)
    assert len(separations) == 1 and melody.separations == 1
    # Outside the windows the conditioner separates raw melodies again, as audiocraft does.
    _embedding(model, _audiocraft_condition(model, _melody(model, 1.0)))
    assert len(separations) == 2


def test_one_window_leaves_audiocrafts_path_alone(model):
    melody = M.separated_melody(model, _melody(model, 2.0))
    conditioner = M.stem_conditioner(model)
    with melody.decoding(model):  # no condition_for_window yet: nothing is bypassed
        assert "_get_stemmed_wav" not in vars(conditioner)
    assert melody.separations == 0


def test_bypass_is_undone_after_an_error(model):
    conditioner = M.stem_conditioner(model)
    with pytest.raises(RuntimeError, match="boom"), M.stems_precomputed(model):
        assert "_get_stemmed_wav" in vars(conditioner)
        raise RuntimeError("boom")
    assert "_get_stemmed_wav" not in vars(conditioner)
