"""Loading MusicGen checkpoints through audiocraft's own loaders, and checking that they are there."""

from __future__ import annotations

import logging
from collections.abc import Callable

from .. import weights as W
from ..errors import EngineError, WeightsMissingError
from ..settings import Settings

log = logging.getLogger(__name__)


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


def load_model(settings: Settings, model_version: str, device: str):
    """What the device loop serves a model_version with: a MusicGen, or EnCodec for encode-decode."""
    W.configure_environment(settings.weights_dir)  # transformers and demucs find their files through it
    if not W.PRESETS[model_version].lm:
        return load_codec(settings, device)
    return load_musicgen(settings, model_version, device)


def checkpoint_source(settings: Settings, model_version: str) -> str:
    """A hub repo id (read from the weights/ cache) or a local directory of the two .bin files."""
    return settings.checkpoints.get(model_version, W.lm_repo(model_version))


def _missing_weights(model_version: str, exc: Exception) -> WeightsMissingError:
    return WeightsMissingError(
        f"Weights for `{model_version}` are incomplete: {exc}. Fetch them with "
        f"`musicgen-local weights fetch {model_version}` (or set MUSICGEN_WEIGHTS to where they are).")


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
        raise _missing_weights("encode-decode", exc) from None


def weights_check(settings: Settings, model_version: str, mbd: bool, on_log: Callable[[str], None]) -> None:
    """Before loading: fetch what is missing when allowed, else fail fast naming the files."""
    from ..fetch import ensure_available, required_files, with_pointed_codecs

    checkpoint = settings.checkpoints.get(model_version)
    if settings.auto_fetch:
        ensure_available(settings.weights_dir, model_version, mbd, on_log, checkpoint=checkpoint)
        return
    needed = with_pointed_codecs(settings.weights_dir, required_files(model_version, mbd, checkpoint))
    W.require(settings.weights_dir, model_version, mbd, tuple(needed))
