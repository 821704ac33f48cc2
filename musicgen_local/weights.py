"""Where checkpoints live and which files each model_version needs.

`weights/` is a Hugging Face hub cache (`weights/hub/models--<org>--<name>/snapshots/<rev>/...`)
plus a torch hub dir (`weights/hub/checkpoints/`), the layout Replicate's own predictor uses
(HF_HOME = TORCH_HOME = weights/). audiocraft's, transformers' and demucs' own loaders read the
files MusicGen publishes from there unmodified, always with HF_HUB_OFFLINE=1 so that a missing
file fails at once instead of hanging on network retries.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import WeightsMissingError
from .registry import PRESETS

T5 = "t5-base"
ENCODEC = "facebook/encodec_32khz"
HTDEMUCS = "adefossez/HTDemucs"
MBD = "facebook/multiband-diffusion"
MBD_CODEC = "facebook/musicgen-small"  # MultiBandDiffusion.get_mbd_musicgen() hard-codes this codec


@dataclass(frozen=True)
class HubFile:
    repo: str
    filename: str

    def __str__(self) -> str:
        return f"{self.repo}/{self.filename}"


LM_FILES = ("state_dict.bin", "compression_state_dict.bin")
T5_FILES = tuple(HubFile(T5, f) for f in ("config.json", "model.safetensors", "spiece.model", "tokenizer.json"))
ENCODEC_FILES = tuple(HubFile(ENCODEC, f) for f in ("config.json", "model.safetensors"))
HTDEMUCS_FILES = (HubFile(HTDEMUCS, "htdemucs.yaml"), HubFile(HTDEMUCS, "955717e8.safetensors"))
MBD_FILES = (HubFile(MBD, "mbd_musicgen_32khz.th"), HubFile(MBD_CODEC, "compression_state_dict.bin"))


def lm_repo(model_version: str) -> str:
    return f"facebook/musicgen-{model_version}"


def required_files(model_version: str, mbd: bool = False) -> tuple[HubFile, ...]:
    """Every hub file a model_version needs. A LM whose compression_state_dict.bin points to
    facebook/encodec_32khz also needs that repo; `lm_missing` discovers it after the fact."""
    preset = PRESETS[model_version]
    if not preset.lm:
        files: tuple[HubFile, ...] = ENCODEC_FILES
    else:
        files = tuple(HubFile(lm_repo(model_version), f) for f in LM_FILES) + T5_FILES
        if preset.melody:
            files += HTDEMUCS_FILES
    return files + (MBD_FILES if mbd else ())


def hub_cache(weights_dir: Path) -> Path:
    return weights_dir / "hub"


def configure_environment(weights_dir: Path) -> None:
    """Point every hub client at weights/ and forbid network lookups. Call before loading."""
    os.environ["HF_HOME"] = str(weights_dir)
    os.environ["HF_HUB_CACHE"] = str(hub_cache(weights_dir))
    os.environ["TORCH_HOME"] = str(weights_dir)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # already imported: its constants were read from the old environment
        constants.HF_HOME = str(weights_dir)
        constants.HF_HUB_CACHE = str(hub_cache(weights_dir))
        constants.HF_HUB_OFFLINE = True


def cached_path(weights_dir: Path, file: HubFile) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(file.repo, file.filename, cache_dir=str(hub_cache(weights_dir)))
    return Path(found) if isinstance(found, str) else None


def missing(weights_dir: Path, files: tuple[HubFile, ...]) -> list[HubFile]:
    return [f for f in files if cached_path(weights_dir, f) is None]


def require(weights_dir: Path, model_version: str, mbd: bool = False, files: tuple[HubFile, ...] | None = None) -> None:
    """Fail fast, naming the files and the command that fetches them."""
    absent = missing(weights_dir, files if files is not None else required_files(model_version, mbd))
    if absent:
        names = ", ".join(str(f) for f in absent)
        flag = " --mbd" if mbd else ""
        raise WeightsMissingError(
            f"Weights for `{model_version}` are not in {weights_dir}: missing {names}. "
            f"Fetch them with `musicgen-local weights fetch {model_version}{flag}` "
            "(or set MUSICGEN_WEIGHTS to where they are)."
        )
