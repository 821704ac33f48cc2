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
from ..errors import WeightsMissingError

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
        raise WeightsMissingError(
            f"MultiBand Diffusion weights are not in {weights_dir}: missing {', '.join(map(str, absent))}. "
            "Fetch them with `musicgen-local weights fetch <model_version> --mbd` "
            "(or set MUSICGEN_WEIGHTS to where they are)."
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


def split_stereo_codes(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, 2K, T] interleaved per RVQ level (L0, R0, L1, R1, ...) -> left [B, K, T], right [B, K, T]."""
    return tokens[:, 0::2], tokens[:, 1::2]


def tokens_to_wav(mbd: MultiBandDiffusion, tokens: torch.Tensor, stereo: bool) -> torch.Tensor:
    """MusicGen tokens [B, K, T] (K = 4 mono, 8 stereo) -> waveform [B, C, T * 640] at 32 kHz, C = 1 or 2.

    Each side is decoded in its own call so that MBD's final EQ match (`re_eq`, whose band levels
    are statistics over the whole batch) follows that side's own EnCodec decode.
    """
    import torch

    tokens = tokens.to(mbd.device)
    with torch.inference_mode():
        if not stereo:
            return mbd.tokens_to_wav(tokens)  # [B, 1, T']
        left, right = split_stereo_codes(tokens)  # [B, K/2, T] each
        return torch.cat([mbd.tokens_to_wav(left), mbd.tokens_to_wav(right)], dim=1)  # [B, 2, T']


def encode_decode(mbd: MultiBandDiffusion, audio: torch.Tensor, sample_rate: int = 32000) -> torch.Tensor:
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
            channels.append(mbd.tokens_to_wav(codes)[..., : audio.shape[-1]])  # [B, 1, T']
    return torch.cat(channels, dim=1)  # [B, C, T']
