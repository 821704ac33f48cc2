"""Configuration in one place: every environment variable the project reads, and its default.

Read once, at start-up, into a frozen `Settings`; nothing reads the environment at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

# name -> (default, one-line meaning). `musicgen-local --help` and the README list these.
ENV_VARS: dict[str, tuple[str, str]] = {
    "MUSICGEN_WEIGHTS": ("./weights", "directory holding the Hugging Face hub cache and torch hub dir"),
    "MUSICGEN_MAX_DURATION": ("300", "longest `duration` accepted, in seconds"),
    "MUSICGEN_MAX_MODELS": ("0", "models kept resident at once (least recently used evicted); 0 = all"),
    "MUSICGEN_DEVICE": ("auto", "torch device: auto (cuda when present), cuda, cpu"),
    "MUSICGEN_DECODER": ("reference", "token decoder: reference (audiocraft's loop) or fast"),
    "MUSICGEN_MAX_BATCH": ("8", "fast decoder: concurrent requests for one model decoded together (1: one at a time)"),
    "MUSICGEN_AUTO_FETCH": ("0", "1: download missing weights on first use"),
    "MUSICGEN_DATA": ("./data", "server: SQLite database and output files"),
    "MUSICGEN_OUTPUT": ("url", "server: `output` as a URL on this server, or `data-uri` (wrapped as FileOutput)"),
    "MUSICGEN_API_TOKEN": ("", "server: when set, /v1 requires `Authorization: Bearer <token>`"),
    "MUSICGEN_CHECKPOINTS": ("", "model_version=dir-or-repo pairs, comma separated, overriding checkpoints"),
    # Read by huggingface_hub itself when `weights fetch` / auto-fetch download (musicgen_local.fetch).
    "HF_ENDPOINT": ("https://huggingface.co", "weights fetch: the hub (or a mirror) to download from"),
    "HF_TOKEN": ("", "weights fetch: a token for private or gated checkpoint repos"),
}


def _flag(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _checkpoint_overrides(value: str) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in value.split(",") if "=" in item)
    return {name.strip(): source.strip() for name, source in pairs}


@dataclass(frozen=True)
class Settings:
    weights_dir: Path = Path("./weights")
    max_duration: int = 300
    max_models: int = 0
    device: str = "auto"
    decoder: str = "reference"
    max_batch: int = 8
    auto_fetch: bool = False
    data_dir: Path = Path("./data")
    api_token: str = ""
    output: str = "url"
    checkpoints: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str:
            return env.get(name, ENV_VARS[name][0])

        return cls(
            weights_dir=Path(get("MUSICGEN_WEIGHTS")).expanduser().resolve(),
            max_duration=int(get("MUSICGEN_MAX_DURATION")),
            max_models=int(get("MUSICGEN_MAX_MODELS")),
            device=get("MUSICGEN_DEVICE"),
            decoder=get("MUSICGEN_DECODER"),
            max_batch=int(get("MUSICGEN_MAX_BATCH")),
            auto_fetch=_flag(get("MUSICGEN_AUTO_FETCH")),
            data_dir=Path(get("MUSICGEN_DATA")).expanduser().resolve(),
            api_token=get("MUSICGEN_API_TOKEN"),
            output=get("MUSICGEN_OUTPUT"),
            checkpoints=_checkpoint_overrides(get("MUSICGEN_CHECKPOINTS")),
        )

    def with_(self, **changes) -> Settings:
        return replace(self, **changes)
