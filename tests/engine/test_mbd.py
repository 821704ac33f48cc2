"""MultiBand Diffusion on the tiny real-format checkpoint: safe loading, mono and stereo decoding,
encode-decode, loading once, and a clear error when a file is missing."""

from __future__ import annotations

import pickle
import shutil
import time

import pytest
import torch

from musicgen_local import weights as W
from musicgen_local.engine import mbd as M
from musicgen_local.errors import WeightsMissingError

FRAME = 640  # samples per token frame at 32 kHz (50 Hz), as the real codec


@pytest.fixture(scope="module")
def mbd(tiny_weights):
    return M.load_mbd(tiny_weights)


def _musicgen(version: str):
    from audiocraft.models import MusicGen, loaders

    repo = W.lm_repo(version)
    return MusicGen(version, loaders.load_compression_model(repo), loaders.load_lm_model(repo))


def test_checkpoint_is_refused_by_plain_safe_loading_and_read_with_the_allow_list(tiny_weights):
    path = W.cached_path(tiny_weights, M.MBD_FILE)
    with pytest.raises(pickle.UnpicklingError, match="omegaconf"):
        torch.load(path)  # torch 2.9 default: weights_only=True
    with M.safe_mbd_unpickling():
        package = torch.load(path)
    assert package["sample_rate"] == 32000 and package["n_bands"] == 4
    assert {"cfg", "model_state", "processor_state"} <= set(package[0])
    assert type(package[0]["cfg"]).__name__ == "DictConfig"


def test_audiocrafts_own_loader_reads_the_tiny_files_under_the_allow_list(tiny_weights):
    from audiocraft.models import MultiBandDiffusion

    with M.safe_mbd_unpickling():
        loaded = MultiBandDiffusion.get_mbd_musicgen(device="cpu")
    assert len(loaded.DPs) == 4 and loaded.sample_rate == 32000


def test_mono_tokens_decode_to_one_channel(mbd):
    tokens = torch.randint(0, 2048, (1, 4, 10))
    wav = M.tokens_to_wav(mbd, tokens, stereo=False)
    assert wav.shape == (1, 1, 10 * FRAME)
    assert torch.isfinite(wav).all() and wav.abs().max() > 0


def test_stereo_codes_split_as_audiocrafts_interleaving():
    from audiocraft.models.encodec import InterleaveStereoCompressionModel

    class _MonoStub(torch.nn.Module):
        channels = 1

    tokens = torch.arange(2 * 8 * 3).view(2, 8, 3)
    expected = InterleaveStereoCompressionModel(_MonoStub()).get_left_right_codes(tokens)
    left, right = M.split_stereo_codes(tokens)
    assert torch.equal(left, expected[0]) and torch.equal(right, expected[1])


def test_stereo_tokens_decode_each_side_into_its_own_channel(mbd):
    tokens = torch.randint(0, 2048, (1, 8, 10))
    left, right = M.split_stereo_codes(tokens)
    torch.manual_seed(7)
    stereo = M.tokens_to_wav(mbd, tokens, stereo=True)
    torch.manual_seed(7)
    left_alone = M.tokens_to_wav(mbd, left, stereo=False)
    right_alone = M.tokens_to_wav(mbd, right, stereo=False)  # continues the same random stream
    assert stereo.shape == (1, 2, 10 * FRAME)
    assert torch.allclose(stereo[:, :1], left_alone, atol=1e-5)
    assert torch.allclose(stereo[:, 1:], right_alone, atol=1e-5)
    assert not torch.allclose(stereo[:, 0], stereo[:, 1])


@pytest.mark.parametrize("channels", [1, 2])
def test_encode_decode_keeps_channels_and_length(mbd, channels):
    t = torch.arange(6000) / 32000
    audio = torch.stack([torch.sin(2 * torch.pi * f * t) for f in (220.0, 330.0)[:channels]])[None] * 0.5
    out = M.encode_decode(mbd, audio)  # 6000 is not a whole number of frames: trimmed back
    assert out.shape == (1, channels, 6000)
    assert torch.isfinite(out).all()


def test_encode_decode_resamples_to_32khz(mbd):
    audio = torch.sin(2 * torch.pi * 440.0 * torch.arange(4410) / 44100)[None, None] * 0.5  # 0.1 s at 44.1 kHz
    assert M.encode_decode(mbd, audio, sample_rate=44100).shape == (1, 1, 3200)


@pytest.mark.parametrize("version", ["large", "stereo-large", "melody-large", "stereo-melody-large"])
def test_mbd_decodes_each_lm_variants_tokens(tiny_weights, mbd, version):
    model = _musicgen(version)
    model.set_generation_params(duration=0.2)
    torch.manual_seed(0)
    tokens = model.generate(["lofi hip hop beat"], return_tokens=True)[1]  # [1, K, 10]
    stereo = model.audio_channels == 2
    wav = M.tokens_to_wav(mbd, tokens, stereo=stereo)
    assert tokens.shape == (1, 8 if stereo else 4, 10)
    assert wav.shape == (1, model.audio_channels, 10 * FRAME)


def test_noise_from_a_generator_is_audiocrafts_noise_from_the_seeded_global_rng(mbd):
    tokens = torch.randint(0, 2048, (1, 4, 10), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(3)
    theirs = mbd.tokens_to_wav(tokens)
    torch.manual_seed(99)  # the global RNG is not used
    ours = M.tokens_to_wav(mbd, tokens, stereo=False, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ours, theirs)
    other = M.tokens_to_wav(mbd, tokens, stereo=False, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(ours, other)


def test_lazy_mbd_loads_once_across_predictions(tiny_weights):
    lazy = M.LazyMbd(tiny_weights)
    assert lazy.loads == 0
    first = lazy.get()
    M.tokens_to_wav(first, torch.randint(0, 2048, (1, 4, 5)), stereo=False)
    second = lazy.get()
    M.tokens_to_wav(second, torch.randint(0, 2048, (1, 8, 5)), stereo=True)
    assert first is second and lazy.loads == 1


@pytest.mark.parametrize("absent", [M.MBD_FILE, M.CODEC_FILE], ids=str)
def test_missing_file_fails_fast_naming_it(tiny_weights, tmp_path, absent):
    shutil.copytree(tiny_weights / "hub", tmp_path / "hub", symlinks=True)
    W.cached_path(tmp_path, absent).unlink()
    start = time.monotonic()
    with pytest.raises(WeightsMissingError, match=str(absent)) as err:
        M.LazyMbd(tmp_path).get()
    assert time.monotonic() - start < 5
    assert "`musicgen-local weights fetch <model_version> --mbd`" in str(err.value)
