"""Loading MusicGen checkpoints through audiocraft's own loaders, and a least-recently-used cache."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .. import weights as W
from ..errors import WeightsMissingError
from ..settings import Settings

log = logging.getLogger(__name__)


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


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

    source = checkpoint_source(settings, model_version)
    cache_dir = str(W.hub_cache(settings.weights_dir))
    try:
        lm = loaders.load_lm_model(source, device=device, cache_dir=cache_dir)
        compression = loaders.load_compression_model(source, device=device, cache_dir=cache_dir)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as exc:
        raise _missing_weights(model_version, exc) from None
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


class ModelCache:
    """Models by key, loaded on first use; beyond `max_models` (0: no limit) the least recently used
    is dropped, and its GPU memory returned."""

    def __init__(self, load: Callable[[str, Callable[[str], None]], Any], max_models: int = 0):
        self._load = load
        self._max = max_models
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many loads happened: observable for tests and health

    def get(self, key: str, on_log: Callable[[str], None] = lambda line: None) -> Any:
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            on_log(f"Loading model {key}...")
            start = time.monotonic()
            model = self._load(key, on_log)
            self.loads += 1
            on_log(f"Model {key} loaded in {time.monotonic() - start:.1f}s.")
            self._models[key] = model
            while self._max and len(self._models) > self._max:
                evicted, _ = self._models.popitem(last=False)
                log.info("evicted %s from the model cache", evicted)
                _free_gpu_memory()
            return model

    def resident(self) -> list[str]:
        return list(self._models)


def _free_gpu_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def weights_check(settings: Settings, model_version: str, mbd: bool, on_log: Callable[[str], None]) -> None:
    """Before loading: fetch what is missing when allowed, else fail fast naming the files."""
    from ..fetch import ensure_available, required_files, with_pointed_codecs

    checkpoint = settings.checkpoints.get(model_version)
    if settings.auto_fetch:
        ensure_available(settings.weights_dir, model_version, mbd, on_log, checkpoint=checkpoint)
        return
    needed = with_pointed_codecs(settings.weights_dir, required_files(model_version, mbd, checkpoint))
    W.require(settings.weights_dir, model_version, mbd, tuple(needed))
