"""Cog's `setup(weights)`: a fine-tuned MusicGen LM handed to the container by COG_WEIGHTS.

Cog passes `setup` the COG_WEIGHTS value (a URL, e.g. a Replicate training's output tarball) or, when
the project has a `weights/` directory, that path. A directory (or tarball) holding the audiocraft
pair `state_dict.bin` + `compression_state_dict.bin` becomes the checkpoint of the model_version with
the same architecture (mono/stereo, text/melody), exactly like a MUSICGEN_CHECKPOINTS entry; the
input schema stays Replicate's. Anything else (our own weights/ cache, None) changes nothing.
"""

from __future__ import annotations

import logging
import tarfile
import tempfile
from pathlib import Path

from .settings import Settings

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
    return {(True, True): "stereo-melody-large", (True, False): "stereo-large",
            (False, True): "melody-large", (False, False): "large"}[(stereo, melody)]


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


def _find_pair(root: Path) -> Path | None:
    # The pair at the top or one folder down (a tarball's own folder); never deeper, so the snapshots
    # inside our hub cache (weights/hub/models--*/snapshots/*/) are not mistaken for a fine-tune.
    candidates = [root, *sorted(p for p in root.iterdir() if p.is_dir())] if root.is_dir() else []
    return next((d for d in candidates if all((d / name).is_file() for name in LM_PAIR)), None)


def settings_for_cog_weights(settings: Settings, weights: object | None) -> Settings:
    """`settings`, with the fine-tuned LM in `weights` (if any) serving its model_version."""
    if weights is None:
        return settings
    text = str(weights)
    root = _download_tar(text) if text.startswith(("http://", "https://")) else Path(text)
    pair = _find_pair(root)
    if pair is None:
        return settings  # e.g. Cog's default ./weights: our hub cache, not a fine-tuned LM
    version = model_version_of(pair / LM_PAIR[0])
    log.info("fine-tuned checkpoint %s serves model_version %s", pair, version)
    return settings.with_(checkpoints={**settings.checkpoints, version: str(pair)})
