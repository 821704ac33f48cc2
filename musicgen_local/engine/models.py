"""Loading MusicGen checkpoints through audiocraft's own loaders, and checking that they are there.

Loading has two stages. `read_checkpoint` (the loader pool; at start-up, the device loop's warm-up, before
anything else runs there) reads the checkpoint files into host memory and warms the OS cache with the files built
from them (T5, htdemucs, the codec); `build_model` (the device loop) builds the model on its device from what was
read, through audiocraft's own `load_lm_model` and `load_compression_model`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import registry
from .. import weights as W
from ..errors import EngineError, WeightsMissingError
from ..settings import Settings
from .residency import ModelKey

log = logging.getLogger(__name__)
FRAME_RATE = 50  # EnCodec 32 kHz, the codec of every MusicGen


def resolve_devices(spec: str) -> list[str]:
    """MUSICGEN_DEVICES -> the devices to run a loop on: auto = every CUDA device, else the CPU."""
    import torch

    spec = spec.strip() or "auto"
    if spec in ("auto", "cuda"):
        cuda = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        if cuda or spec == "auto":
            return cuda or ["cpu"]
        raise EngineError("MUSICGEN_DEVICES=cuda but no CUDA device is visible.")
    return [d.strip() for d in spec.split(",") if d.strip()]


def device_name(device: str) -> str:
    """A device as people know it: the GPU's product name (`NVIDIA H100 80GB HBM3`), or `CPU`."""
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} ({device})"
    return "CPU"


def load_model(settings: Settings, model_version: str, device: str):
    """What the device loop serves a model_version with: a MusicGen, or EnCodec for encode-decode."""
    return build_model(settings, read_checkpoint(settings, ModelKey(model_version)), device)


@dataclass
class HostCopy:
    """A model's checkpoint packages, read into host memory by the loader stage."""

    model_version: str
    packages: dict[tuple[str, str], Any] = field(default_factory=dict)  # (kind, source) -> unpickled package
    checkpoint: str | None = None  # a full fine-tune's folder, read instead of the published checkpoint
    file_bytes: int = 0  # the other files the model is built from (T5, htdemucs, a pointed-to codec)

    def footprint(self, dtype_bytes: int, prefix: int):
        """What the model will hold on a device whose LM computes in `dtype_bytes`, from its checkpoint's
        own config and tensors (None for encode-decode, which reads no checkpoint package)."""
        from omegaconf import OmegaConf

        from .memory import Footprint

        lm = next((pkg for (kind, _), pkg in self.packages.items() if kind == "lm"), None)
        if lm is None:
            return None
        compression = next(pkg for (kind, _), pkg in self.packages.items() if kind == "compression")
        cfg = OmegaConf.create(lm["xp.cfg"])
        t = cfg.transformer_lm
        codec = sum(v.numel() * 4 for v in compression.get("best_state", {}).values() if hasattr(v, "numel"))
        weights = sum(v.numel() for v in lm["best_state"].values()) * dtype_bytes + codec + self.file_bytes
        stereo = bool(cfg.get("interleave_stereo_codebooks", {}).get("use", False))
        frames = int(cfg.dataset.segment_duration * FRAME_RATE)
        return Footprint(
            weights,
            int(t.dim),
            int(t.num_layers),
            int(t.num_heads),
            int(t.n_q),
            int(t.card),
            prefix + 1 + frames + max(cfg.codebooks_pattern.delay.delays),
            dtype_bytes,
            streams=2 if stereo else 1,
        )


_preloaded = threading.local()  # the device loop's packages while it builds (audiocraft's loader reads them)


def read_checkpoint(settings: Settings, key: ModelKey) -> HostCopy:
    """The loader stage: read what building the model will read, so the device loop does not wait on disk
    (a full fine-tune's LM from its own folder)."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    model_version = key.model_version
    W.configure_environment(settings.weights_dir)  # transformers and demucs find their files through it
    host = HostCopy(model_version, checkpoint=key.full_tune)
    settings = _with_checkpoint(settings, host)
    for file in W.required_files(model_version):
        path = W.cached_path(settings.weights_dir, file)
        if path is not None and file.filename not in W.LM_FILES:
            host.file_bytes += _warm_os_cache(path)
    if not registry.PRESETS[model_version].lm:
        return host
    source = checkpoint_source(settings, model_version)
    cache_dir = str(W.hub_cache(settings.weights_dir))
    try:
        lm = _read_lm(source, cache_dir=cache_dir)
        compression = _read_compression(source, cache_dir=cache_dir)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as exc:
        raise _missing_weights(model_version, exc) from None
    host.packages = {("lm", str(source)): lm, ("compression", str(source)): compression}
    if "pretrained" in compression:
        for file in W.ENCODEC_FILES:
            path = W.cached_path(settings.weights_dir, file)
            if path is not None:
                host.file_bytes += _warm_os_cache(path)
    return host


def _warm_os_cache(path: Path) -> int:
    """Read a file once so that building from it reads memory, not disk; its size."""
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            size += len(chunk)
    return size


def _read_lm(source, cache_dir=None):
    from audiocraft.models import loaders

    return _original(loaders, "load_lm_model_ckpt")(source, cache_dir=cache_dir)


def _read_compression(source, cache_dir=None):
    from audiocraft.models import loaders

    return _original(loaders, "load_compression_model_ckpt")(source, cache_dir=cache_dir)


def _original(loaders, name: str):
    """audiocraft's own reader, also while `_serve_preloaded` stands in front of it."""
    fn = getattr(loaders, name)
    return getattr(fn, "original", fn)


def _serve_preloaded(loaders) -> None:
    """audiocraft's `load_lm_model` reads and builds in one call; in front of its readers, a package
    the loader stage already read is handed over (on the thread that preloaded it, only)."""
    for kind, name in (("lm", "load_lm_model_ckpt"), ("compression", "load_compression_model_ckpt")):
        original = getattr(loaders, name)
        if hasattr(original, "original"):
            continue

        def read(file_or_url_or_id, cache_dir=None, *, _kind=kind, _original=original):
            pkg = getattr(_preloaded, "packages", {}).get((_kind, str(file_or_url_or_id)))
            return pkg if pkg is not None else _original(file_or_url_or_id, cache_dir=cache_dir)

        read.original = original
        setattr(loaders, name, read)


@contextmanager
def _preloaded_packages(host: HostCopy):
    from audiocraft.models import loaders

    _serve_preloaded(loaders)
    _preloaded.packages = host.packages
    try:
        yield
    finally:
        _preloaded.packages = {}


def _with_checkpoint(settings: Settings, host: HostCopy) -> Settings:
    if host.checkpoint is None:
        return settings
    return settings.with_(checkpoints={**settings.checkpoints, host.model_version: host.checkpoint})


# One build at a time in the process: transformers' `from_pretrained` (audiocraft's T5 conditioner) swaps
# process-wide state while it loads (PreTrainedModel.tie_weights made a no-op, the default dtype), so two device
# loops building at once left one T5's tied embedding on the meta device ("Cannot copy out of meta tensor").
_BUILDING = threading.Lock()


def build_model(settings: Settings, host: HostCopy, device: str):
    """The device stage: the model on `device`, from the packages `read_checkpoint` read."""
    settings = _with_checkpoint(settings, host)
    W.configure_environment(settings.weights_dir)
    with _BUILDING:
        if not registry.PRESETS[host.model_version].lm:
            return load_codec(settings, device)
        with _preloaded_packages(host):
            return load_musicgen(settings, host.model_version, device)


def checkpoint_source(settings: Settings, model_version: str) -> str:
    """A hub repo id (read from the weights/ cache) or a local directory of the two .bin files."""
    return settings.checkpoints.get(model_version, W.lm_repo(model_version))


def _missing_weights(model_version: str, exc: Exception) -> WeightsMissingError:
    """The loaders found a file missing that the check did not (a partial copy): the same advice."""
    return WeightsMissingError(f"Weights for `{model_version}` are incomplete: {exc}. {W.fetch_advice(model_version)}")


def load_musicgen(settings: Settings, model_version: str, device: str):
    """A MusicGen built as Replicate's predictor builds it: codec + LM (float16 on CUDA) from the
    checkpoint files, then the same melody-conditioner settings `MusicGen.get_pretrained` applies."""
    from audiocraft.models import MusicGen, loaders
    from huggingface_hub.errors import LocalEntryNotFoundError

    from .fast.model import lay_out_for_cpu

    source = checkpoint_source(settings, model_version)
    cache_dir = str(W.hub_cache(settings.weights_dir))
    try:
        lm = loaders.load_lm_model(source, device=device, cache_dir=cache_dir)
        compression = loaders.load_compression_model(source, device=device, cache_dir=cache_dir)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as exc:
        raise _missing_weights(model_version, exc) from None
    lay_out_for_cpu(lm)  # before anything decodes with it, so that both decoders see one layout
    if "self_wav" in lm.condition_provider.conditioners:
        lm.condition_provider.conditioners["self_wav"].match_len_on_eval = True
        lm.condition_provider.conditioners["self_wav"]._use_masking = False
    return MusicGen(model_version, compression, lm)


def load_codec(settings: Settings, device: str):
    """facebook/encodec_32khz, the codec every MusicGen model uses (for encode-decode)."""
    from audiocraft.models.encodec import CompressionModel
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return CompressionModel.get_pretrained(W.ENCODEC, device=device).eval()
    except (LocalEntryNotFoundError, OSError) as exc:
        raise _missing_weights(registry.ENCODE_DECODE, exc) from None


def weights_check(settings: Settings, model_version: str, mbd: bool, on_log: Callable[[str], None]) -> None:
    """Before loading: fetch what is missing when allowed, else fail fast naming the files."""
    W.ensure(
        settings.weights_dir, model_version, mbd, on_log, settings.checkpoints.get(model_version), settings.auto_fetch
    )
