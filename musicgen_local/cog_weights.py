"""Cog's `setup(weights)`: a fine-tune handed to the container by COG_WEIGHTS.

Cog passes `setup` the COG_WEIGHTS value (a URL, e.g. a training's output tarball) or, when the
project has a `weights/` directory, that path. Two kinds of fine-tune are understood:
- ours (`musicgen_local.tuned`: what `train.py`, the trainings API and `musicgen-local train` write,
  LoRA or full): requests for its base model_version decode with it (`Request.weights`);
- a folder (or tarball) holding only audiocraft's pair `state_dict.bin` + `compression_state_dict.bin`
  (e.g. trained elsewhere): it becomes the checkpoint of the model_version with the same architecture
  (mono/stereo, text/melody), exactly like a MUSICGEN_CHECKPOINTS entry.
The input schema stays Replicate's. Anything else (our own weights/ cache, None) changes nothing.
"""

from __future__ import annotations

import logging
import tarfile
import tempfile
from pathlib import Path

from . import registry, tuned
from .settings import Settings
from .tuned import Tuned

log = logging.getLogger(__name__)
LM_PAIR = ("state_dict.bin", "compression_state_dict.bin")


def model_version_of(state_dict: Path) -> str:
    """The Replicate model_version whose architecture this LM checkpoint has."""
    import torch
    import yaml

    # mmap: only the config string is read, not the (multi-GB) tensors.
    cfg = yaml.safe_load(torch.load(state_dict, map_location="cpu", mmap=True, weights_only=True)["xp.cfg"])
    stereo = bool((cfg.get("interleave_stereo_codebooks") or {}).get("use"))
    melody = "self_wav" in (cfg.get("conditioners") or {})
    return registry.model_version_of(2 if stereo else 1, melody, int(cfg["transformer_lm"]["dim"]))


def _download_tar(url: str) -> Path:
    import httpx

    target = Path(tempfile.mkdtemp(prefix="cog-weights-"))
    archive = target / "weights.tar"
    with httpx.stream("GET", url, follow_redirects=True, timeout=60) as response, archive.open("wb") as f:
        response.raise_for_status()
        for chunk in response.iter_bytes(1 << 20):
            f.write(chunk)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")  # "data": no absolute paths, links or devices from the archive
    archive.unlink()
    return target


def _find(root: Path, names: tuple[str, ...]) -> Path | None:
    # The files at the top or one folder down (a tarball's own folder); never deeper, so the snapshots
    # inside our hub cache (weights/hub/models--*/snapshots/*/) are not mistaken for a fine-tune.
    candidates = [root, *sorted(p for p in root.iterdir() if p.is_dir())] if root.is_dir() else []
    return next((d for d in candidates if all((d / name).is_file() for name in names)), None)


def fine_tune(settings: Settings, weights: object | None) -> tuple[Settings, Tuned | None]:
    """`settings` (with a bare audiocraft pair in `weights` serving its model_version), and our own
    fine-tune in `weights`, if that is what it holds."""
    if weights is None:
        return settings, None
    text = str(weights)
    root = _download_tar(text) if text.startswith(("http://", "https://")) else Path(text)
    if root.is_file() and tarfile.is_tarfile(root):  # a training's tar, given as a path
        target = Path(tempfile.mkdtemp(prefix="cog-weights-"))
        with tarfile.open(root) as tar:
            tar.extractall(target, filter="data")
        root = target
    ours = _find(root, (tuned.MANIFEST,))
    if ours is not None:
        found = tuned.read(ours)
        log.info("%s fine-tune %s serves model_version %s", found.kind, ours, found.base)
        return settings, found
    pair = _find(root, LM_PAIR)
    if pair is None:
        return settings, None  # e.g. Cog's default ./weights: our hub cache, not a fine-tuned LM
    version = model_version_of(pair / LM_PAIR[0])
    log.info("fine-tuned checkpoint %s serves model_version %s", pair, version)
    return settings.with_(checkpoints={**settings.checkpoints, version: str(pair)}), None


def settings_for_cog_weights(settings: Settings, weights: object | None) -> Settings:
    """`settings`, with a bare audiocraft pair in `weights` (if any) serving its model_version."""
    return fine_tune(settings, weights)[0]
