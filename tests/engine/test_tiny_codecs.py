"""The tiny checkpoints' codecs are informative: different tokens decode to different audio, so that
a test comparing outputs can tell one token sequence from another (a codec whose codebooks are all
zeros decodes every sequence to the same sound, and every such test would pass whatever the tokens)."""

from __future__ import annotations

import pytest
import torch

from musicgen_local import weights as W
from musicgen_local.engine import mbd as M


def _compression(version: str):
    from audiocraft.models import loaders

    return loaders.load_compression_model(W.lm_repo(version), device="cpu")


def _two_token_sequences(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 2048, (1, k, 25), generator=g)
    b = a.clone()
    b[0, 0, 12] = (b[0, 0, 12] + 1) % 2048  # one token of the first codebook
    return a, b


@pytest.mark.parametrize(
    "version, codec",
    [("large", "audiocraft EnCodec"), ("stereo-large", "transformers EnCodec (facebook/encodec_32khz)")],
)
def test_each_codec_maps_different_tokens_to_different_audio(tiny_weights, version, codec):
    model = _compression(version)
    a, b = _two_token_sequences(model.num_codebooks)
    with torch.no_grad():
        wav_a, wav_b = model.decode(a, None), model.decode(b, None)
    assert wav_a.shape == (1, model.channels, 25 * 640)
    difference = (wav_a - wav_b).abs().max().item()
    assert difference > 1e-3 * wav_a.abs().max().item() > 0, codec
    if model.channels == 2:  # the right channel's codebooks are the odd ones: unchanged above
        a_right, b_right = a.clone(), a.clone()
        b_right[0, 1, 12] = (b_right[0, 1, 12] + 1) % 2048
        with torch.no_grad():
            right = model.decode(a_right, None) - model.decode(b_right, None)
        assert right[0, 1].abs().max() > 0 and right[0, 0].abs().max() == 0


def test_multiband_diffusion_maps_different_tokens_to_different_audio(tiny_weights):
    mbd = M.load_mbd(tiny_weights)
    a, b = _two_token_sequences(4)
    wav_a = M.tokens_to_wav(mbd, a, stereo=False, generator=torch.Generator().manual_seed(1))
    wav_b = M.tokens_to_wav(mbd, b, stereo=False, generator=torch.Generator().manual_seed(1))
    assert (wav_a - wav_b).abs().max() > 1e-3 * wav_a.abs().max() > 0


@pytest.mark.parametrize("version", ["large", "stereo-large"])
def test_different_seeds_give_different_files_after_normalisation(engine, version):
    """What the codecs' informativeness is for: a user's file depends on the tokens, stereo too."""
    from tests.audio_helpers import generate

    files = {generate(engine, model_version=version, duration=1, seed=seed).audio for seed in (7, 8)}
    assert len(files) == 2
