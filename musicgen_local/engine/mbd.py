"""MultiBand Diffusion (MBD): load it from weights/ safely, decode MusicGen tokens with it, stereo too.

audiocraft's `MultiBandDiffusion.tokens_to_wav` decodes one mono codebook stack. Stereo MusicGen
interleaves two such stacks (left and right per RVQ level, `InterleaveStereoCompressionModel` with
`per_timestep=False`); we split them, decode each side with MBD and stack the two channels, which is
what Replicate refuses to do ("Multi-Band Diffusion is only available with non-stereo models").

The checkpoint pickles OmegaConf configs, so torch >= 2.6's `weights_only` loading refuses it unless
those classes are allowed. We allow exactly the plain-data classes it contains, never
`weights_only=False`: a tampered file can then still not run code on load.
"""

from __future__ import annotations

import collections
import logging
import threading
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from .. import weights as W

if TYPE_CHECKING:
    import torch
    from audiocraft.models import MultiBandDiffusion

log = logging.getLogger(__name__)

MBD_FILE, CODEC_FILE = W.MBD_FILES  # mbd_musicgen_32khz.th, facebook/musicgen-small codec


def _allowed_globals() -> list:
    """Every class the MBD checkpoint unpickles besides tensors: OmegaConf containers, their
    metadata and value nodes (all plain data; none runs code when rebuilt)."""
    import omegaconf
    from omegaconf import base, nodes

    value_nodes = [nodes.AnyNode, nodes.StringNode, nodes.IntegerNode, nodes.FloatNode, nodes.BooleanNode]
    return [
        omegaconf.DictConfig,
        omegaconf.ListConfig,
        base.ContainerMetadata,
        base.Metadata,
        *value_nodes,
        typing.Any,
        dict,
        list,
        int,
        float,
        str,
        bool,
        collections.defaultdict,
    ]


@contextmanager
def safe_mbd_unpickling() -> Iterator[None]:
    import torch

    with torch.serialization.safe_globals(_allowed_globals()):
        yield


def load_mbd(weights_dir: Path, device: str = "cpu") -> MultiBandDiffusion:
    """What `MultiBandDiffusion.get_mbd_musicgen()` builds, from the files in weights_dir.

    Raises WeightsMissingError naming the absent file(s) before anything is read, so a missing
    checkpoint never reaches a network lookup. audiocraft's own loaders read both files (given as
    paths, they skip the hub).
    """
    from audiocraft.models.loaders import load_compression_model, load_diffusion_models
    from audiocraft.models.multibanddiffusion import DiffusionProcess, MultiBandDiffusion
    from audiocraft.modules.diffusion_schedule import NoiseSchedule

    absent = W.missing(weights_dir, W.MBD_FILES)
    if absent:
        raise W.missing_error(
            "MultiBand Diffusion weights are", weights_dir, absent, W.fetch_advice("<model_version>", mbd=True)
        )
    codec_path, mbd_path = W.cached_path(weights_dir, CODEC_FILE), W.cached_path(weights_dir, MBD_FILE)
    with safe_mbd_unpickling():
        codec = load_compression_model(str(codec_path), device=device)
        models, processors, cfgs = load_diffusion_models(str(mbd_path), device=device)
    processes = [
        DiffusionProcess(
            model=model.eval(), noise_schedule=NoiseSchedule(**cfg.schedule, sample_processor=processor, device=device)
        )
        for model, processor, cfg in zip(models, processors, cfgs, strict=True)
    ]
    log.info("Loaded MultiBand Diffusion (%d bands) from %s", len(processes), mbd_path)
    return MultiBandDiffusion(DPs=processes, codec_model=codec)


class LazyMbd:
    """MBD loaded on first use and kept: one per engine, shared by every prediction."""

    def __init__(self, weights_dir: Path, device: str = "cpu") -> None:
        self.weights_dir, self.device = Path(weights_dir), device
        self.loads = 0  # how many times the checkpoint was read (tests assert it stays 1)
        self._mbd: MultiBandDiffusion | None = None
        self._lock = threading.Lock()

    def get(self) -> MultiBandDiffusion:
        with self._lock:
            if self._mbd is None:
                self._mbd = load_mbd(self.weights_dir, self.device)
                self.loads += 1
            return self._mbd

    def bytes(self) -> int:
        """What the loaded MBD holds on its device (its diffusion networks and its codec)."""
        from .memory import module_bytes

        mbd = self._mbd
        if mbd is None:
            return 0
        return module_bytes(mbd.codec_model) + sum(module_bytes(dp.model) for dp in mbd.DPs)


def split_stereo_codes(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, 2K, T] interleaved per RVQ level (L0, R0, L1, R1, ...) -> left [B, K, T], right [B, K, T]."""
    return tokens[:, 0::2], tokens[:, 1::2]


def tokens_to_wav(
    mbd: MultiBandDiffusion, tokens: torch.Tensor, stereo: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """MusicGen tokens [B, K, T] (K = 4 mono, 8 stereo) -> waveform [B, C, T * 640] at 32 kHz, C = 1 or 2.

    Each side is decoded in its own call so that MBD's final EQ match (`re_eq`, whose band levels
    are statistics over the whole batch) follows that side's own EnCodec decode. The diffusion noise
    comes from `generator` (the request's own; None: torch's global one, as audiocraft draws it).
    """
    import torch

    tokens = tokens.to(mbd.device)
    with torch.inference_mode():
        if not stereo:
            return _tokens_to_wav(mbd, tokens, generator)  # [B, 1, T']
        left, right = split_stereo_codes(tokens)  # [B, K/2, T] each
        return torch.cat([_tokens_to_wav(mbd, left, generator), _tokens_to_wav(mbd, right, generator)], dim=1)


def encode_decode(
    mbd: MultiBandDiffusion, audio: torch.Tensor, sample_rate: int = 32000, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The encode-decode round trip with MBD: audio [B, C, T] (resampled to MBD's 32 kHz when
    `sample_rate` differs) -> MBD's EnCodec tokens per channel -> MBD decode -> [B, C, T'] at 32 kHz
    (the codec pads to whole 640-sample frames; we trim back to the input's length)."""
    import torch
    from audiocraft.data.audio_utils import convert_audio

    assert audio.dim() == 3, f"expected [B, C, T], got {tuple(audio.shape)}"
    audio = convert_audio(audio.to(mbd.device), sample_rate, mbd.sample_rate, audio.shape[1])  # [B, C, T']
    channels = []
    with torch.inference_mode():
        for c in range(audio.shape[1]):
            codes, scale = mbd.codec_model.encode(audio[:, c : c + 1])  # [B, K, frames]
            assert scale is None, "MBD's codec does not renormalise"
            channels.append(_tokens_to_wav(mbd, codes, generator)[..., : audio.shape[-1]])  # [B, 1, T']
    return torch.cat(channels, dim=1)  # [B, C, T']


# What audiocraft's MultiBandDiffusion.tokens_to_wav and NoiseSchedule.generate_subsampled compute,
# with every Gaussian draw taken from `generator` (same shapes, same order).


def _tokens_to_wav(mbd: MultiBandDiffusion, tokens: torch.Tensor, generator, n_bands: int = 32) -> torch.Tensor:
    wav_encodec = mbd.codec_model.decode(tokens)
    condition = mbd.get_emb(tokens)
    out = _generate(mbd, condition, wav_encodec.size(), generator)
    return mbd.re_eq(wav=out, ref=wav_encodec, n_bands=n_bands)


def _randn(like: torch.Tensor, generator) -> torch.Tensor:
    import torch

    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def _generate(mbd: MultiBandDiffusion, emb: torch.Tensor, size, generator) -> torch.Tensor:
    import torch

    out = torch.zeros(size).to(mbd.device)
    for process in mbd.DPs:
        out += _subsampled(process.schedule, process.model, _randn(out, generator), emb, generator)
    return out


def _subsampled(schedule, model, initial: torch.Tensor, condition: torch.Tensor, generator) -> torch.Tensor:
    import torch
    from audiocraft.modules.diffusion_schedule import betas_from_alpha_bar

    step_list = list(range(1000))[::-50] + [0]
    alpha_bar = schedule.get_alpha_bar(step=schedule.num_steps - 1)
    alpha_bars = (1 - schedule.betas).cumprod(dim=0)[list(reversed(step_list))].cpu()
    betas = betas_from_alpha_bar(alpha_bars)
    current = initial * schedule.noise_scale
    for idx, step in enumerate(step_list[:-1]):
        with torch.no_grad():
            estimate = model(current, step, condition=condition).sample * schedule.noise_scale
        alpha = 1 - betas[-1 - idx]
        previous = (current - (1 - alpha) / (1 - alpha_bar).sqrt() * estimate) / alpha.sqrt()
        previous_alpha_bar = schedule.get_alpha_bar(step_list[idx + 1])
        if step == step_list[-2]:
            sigma2, previous_alpha_bar = 0, torch.tensor(1.0)
        else:
            sigma2 = (1 - previous_alpha_bar) / (1 - alpha_bar) * (1 - alpha)
        if sigma2 > 0:
            previous += sigma2**0.5 * _randn(previous, generator) * schedule.noise_scale
        if schedule.clip:
            previous = previous.clamp(-schedule.clip, schedule.clip)
        current, alpha_bar = previous, previous_alpha_bar
        if step == 0:
            previous *= schedule.rescale
    return schedule.sample_processor.return_sample(previous)
