"""Melody separation with the request's own RNG: audiocraft's conditioning to the bit, windows tiled
from one separation as audiocraft tiles the raw melody."""

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


@pytest.mark.slow
def test_our_separation_gives_audiocrafts_conditioning(model, separations, chroma_inputs):
    """Stems separated by `separate` with the shift from random.Random(0), handed over precomputed,
    give the condition audiocraft's own conditioner computes after random.seed(0)."""
    from audiocraft.modules.conditioners import WavCondition

    wav = _melody(model, 3.0)
    random.seed(0)  # htdemucs' random time shift (apply_model shifts=1) comes from `random`
    expected = _embedding(model, _audiocraft_condition(model, wav))
    assert len(separations) == 1

    random.seed(1)  # the global RNG is not ours: any state gives the same stems
    stems = M.separate(model, wav, random.Random(0))  # [1, 1, T]
    prepared = WavCondition(stems, torch.tensor([stems.shape[-1]]), [SR], [None], [None])
    with M.stems_precomputed(model):
        got = _embedding(model, prepared)
    assert len(separations) == 2  # the separation above, none inside
    assert stems.shape == (1, 1, wav.shape[-1])
    assert torch.equal(chroma_inputs[0], stems)  # audiocraft's own stems, to the bit
    assert torch.equal(chroma_inputs[1], stems)  # taken as they are
    assert torch.equal(got, expected)
    # Without the bypass the conditioner would separate the stems a second time.
    _embedding(model, prepared)
    assert len(separations) == 3 and not torch.allclose(chroma_inputs[2], stems, atol=1e-3)


@pytest.mark.slow
def test_the_shift_comes_from_the_requests_rng(model):
    wav = _melody(model, 3.0)
    a, b = M.separate(model, wav, random.Random(0)), M.separate(model, wav, random.Random(0))
    assert torch.equal(a, b)
    assert not torch.equal(a, M.separate(model, wav, random.Random(5)))


def test_windows_tile_the_separated_melody_as_audiocraft_tiles_the_raw_one(model):
    stems = M.separate(model, _melody(model, 10.0), random.Random(0))
    length, window = stems.shape[-1], int(model.max_duration * SR)
    for offset_s in (0.0, 18.0, 36.0):
        condition = M.window_condition(model, stems, offset_s, windowed=True)
        positions = torch.arange(int(offset_s * SR), int(offset_s * SR) + window)
        assert condition.wav.shape == (1, 1, window)
        assert torch.equal(condition.wav, stems[..., positions % length])
        assert condition.length.tolist() == [window] and condition.sample_rate == [SR]
    single = M.window_condition(model, stems, 0.0, windowed=False)  # one window: the melody as it is
    assert torch.equal(single.wav, stems) and single.length.tolist() == [length]


def test_bypass_is_undone_after_an_error(model):
    conditioner = M.stem_conditioner(model)
    with pytest.raises(RuntimeError, match="boom"), M.stems_precomputed(model):
        assert "_get_stemmed_wav" in vars(conditioner)
        raise RuntimeError("boom")
    assert "_get_stemmed_wav" not in vars(conditioner)
