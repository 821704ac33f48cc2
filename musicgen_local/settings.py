"""Configuration in one place: every environment variable the project reads, and its default.

Read once, at start-up, into a frozen `Settings`; nothing reads the environment at import time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import MusicgenError

# name -> (default, one-line meaning). `musicgen-local --help` and docs/configuration.md list these.
ENV_VARS: dict[str, tuple[str, str]] = {
    "MUSICGEN_WEIGHTS": ("./weights", "directory holding the Hugging Face hub cache and torch hub dir"),
    "MUSICGEN_MAX_DURATION": ("300", "longest `duration` accepted, in seconds (and longest encode-decode input)"),
    "MUSICGEN_MAX_MODELS": (
        "0",
        (
            "models kept resident per device at most (least recently used idle ones evicted); "
            "0 = as many as fit in the device's memory plan"
        ),
    ),
    "MUSICGEN_DEVICE_MEMORY": (
        "",
        (
            "bytes each device's memory plan may use (e.g. 20GB, 18GiB); unset = the device's "
            "free memory at start (a 5% margin, and 512 MiB on CUDA, are kept back)"
        ),
    ),
    "MUSICGEN_DEVICES": (
        "auto",
        ("devices, one engine loop each: auto (every CUDA device, else cpu), cpu, or a list such as cuda:0,cuda:1"),
    ),
    "MUSICGEN_DECODER": ("fast", "token decoder: fast (batched, static cache) or reference (audiocraft's loop)"),
    "MUSICGEN_STEP_MODE": ("auto", "fast decoder step: auto (CUDA graphs on CUDA), graph, compile, or eager"),
    "MUSICGEN_CPU_PRODUCTS": (
        "rows",
        (
            "fast decoder's matrix products on CPU: rows (our batch-invariant kernel, "
            "built once by make install) or torch (MKL, as audiocraft)"
        ),
    ),
    "MUSICGEN_HOST_LORAS": (
        "32",
        "LoRA fine-tunes kept in host memory once read from their tars (the least recently used beyond it go)",
    ),
    "MUSICGEN_MAX_BATCH": ("8", "fast decoder: requests per model decoded together on one device"),
    "MUSICGEN_MAX_LORAS": (
        "4",
        (
            "fast decoder: LoRA adapter slots per model on each device (distinct fine-tunes decoding in its "
            "batch at once; resident ones are kept, least recently used replaced); 0 = none"
        ),
    ),
    "MUSICGEN_MAX_LORA_RANK": (
        "16",
        "fast decoder: largest LoRA rank its adapter slots hold (larger ones are refused)",
    ),
    "MUSICGEN_WARMUP": (
        "default",
        (
            "models loaded and warmed before READY: default (stereo-melody-large when "
            "present), all, none, or a comma-separated list"
        ),
    ),
    "MUSICGEN_AUTO_FETCH": ("0", "1: download missing weights on first use"),
    "MUSICGEN_INPUT_TIMEOUT": ("60", "input_audio download: seconds allowed in total (connect, redirects, body)"),
    "MUSICGEN_MAX_INPUT_BYTES": ("104857600", "input_audio download: largest accepted size in bytes"),
    "MUSICGEN_MAX_INPUT_SAMPLES": (
        "64000000",
        (
            "input_audio: most samples (channels x rate x seconds, after "
            "cropping) one input may decode to, checked before decoding"
        ),
    ),
    "MUSICGEN_MAX_DATASET_BYTES": (
        "8589934592",
        ("training: largest dataset, downloaded and unpacked, in bytes (an archive that unpacks past it is refused)"),
    ),
    "MUSICGEN_MAX_DATASET_SECONDS": (
        "14400",
        "training: most seconds of audio in one dataset (4 h by default), counted as it decodes",
    ),
    "MUSICGEN_MAX_DATASET_FILES": ("2000", "training: most files (archive members) in one dataset"),
    "MUSICGEN_DATASET_TIMEOUT": (
        "600",
        (
            "training: seconds each step of preparing a dataset may take (its download, its unpacking, "
            "each file's probe and decode); then the training fails, naming the step"
        ),
    ),
    "MUSICGEN_TRAINING_SHARE": (
        "0.1",
        (
            "training: the most of a device's time a training takes while predictions decode there "
            "(it runs at full speed when none do)"
        ),
    ),
    "MUSICGEN_STREAM_SECONDS": ("1.0", "length of the audio segments streamed while generating, in seconds"),
    "MUSICGEN_DATA": ("./data", "server: SQLite database, output files, and scratch space for inputs"),
    "MUSICGEN_LOG_FORMAT": ("text", "logs: `text` (readable) or `json` (one object per line, with the prediction id)"),
    "MUSICGEN_OUTPUT": ("url", "server: `output` as a URL on this server, or `data-uri` (wrapped as FileOutput)"),
    "MUSICGEN_API_TOKEN": ("", "server: when set, /v1 requires `Authorization: Bearer <token>`"),
    "MUSICGEN_ACCOUNT": ("local", "server: the username of its one account (GET /v1/account), which owns deployments"),
    "MUSICGEN_SHUTDOWN_GRACE": ("30", "server: on SIGTERM, seconds running predictions get to finish"),
    "MUSICGEN_CHECKPOINTS": ("", "model_version=dir-or-repo pairs, comma separated, overriding checkpoints"),
    "MUSICGEN_HEADER_TIMEOUT": (
        "10",
        (
            "server: seconds a connection has to send a request's line and headers "
            "(after it opens, or after the previous response); then it is closed"
        ),
    ),
    "MUSICGEN_BODY_TIMEOUT": (
        "30",
        (
            "server: seconds a request's body has to arrive, plus one for every MUSICGEN_BODY_MIN_RATE bytes "
            "that arrived; a slower body is answered 408 and its connection closed"
        ),
    ),
    "MUSICGEN_BODY_MIN_RATE": (
        "8192",
        "server: bytes per second a request body must average (with MUSICGEN_BODY_TIMEOUT)",
    ),
    "MUSICGEN_MAX_CONNECTIONS_PER_CLIENT": (
        "100",
        (
            "server: connections one client address (an IPv6 /64) keeps open; requests on more are answered 429; "
            "0 = no cap (behind a reverse proxy every client has the proxy's address)"
        ),
    ),
    "MUSICGEN_MAX_BODY_BYTES": ("104857600", "server: largest request body (JSON or upload), in bytes; 413 past it"),
    "MUSICGEN_MAX_QUEUE": ("1000", "server: predictions not yet finished; past it, create answers 429; 0 = no limit"),
    "MUSICGEN_RETENTION": ("", "server: remove outputs and uploads after this long (e.g. 1h, 7d); unset = keep"),
    "MUSICGEN_BLOCK_PRIVATE_URLS": ("0", "1: webhook and input URLs may not reach private or loopback addresses"),
    "MUSICGEN_RAY_ADDRESS": (
        "",
        (
            "unset: the engine runs in this process; `local`: on Ray Serve started here, one "
            "replica per GPU; `auto` (the cluster this machine is a node of) or the head's "
            "host:port (6379): on that Ray cluster"
        ),
    ),
    "MUSICGEN_RAY_REPLICAS": (
        "",
        (
            "with MUSICGEN_RAY_ADDRESS: engine replicas, a count or `min-max` to autoscale "
            "on queued requests; unset: one per GPU of the cluster (one on CPU)"
        ),
    ),
    # Read by huggingface_hub itself when `weights fetch` / auto-fetch download (musicgen_local.weights).
    "HF_ENDPOINT": ("https://huggingface.co", "weights fetch: the hub (or a mirror) to download from"),
    "HF_TOKEN": ("", "weights fetch: a token for private or gated checkpoint repos"),
}


class SettingError(ValueError, MusicgenError):
    """A setting's value that cannot be used: one line naming the variable and what it accepts."""


def _number(kind: type, name: str, value: str):
    try:
        return kind(value)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise SettingError(f"{name}={value!r}: give {what} (default: {ENV_VARS[name][0]}).") from None


def _at_least(low: int, name: str, value: str) -> int:
    number = _number(int, name, value)
    if number < low:
        raise SettingError(f"{name}={value!r}: give a whole number of {low} or more (default: {ENV_VARS[name][0]}).")
    return number


def _positive(kind: type, name: str, value: str):
    number = _number(kind, name, value)
    if not number > 0:
        raise SettingError(f"{name}={value!r}: give a number above 0 (default: {ENV_VARS[name][0]}).")
    return number


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SettingError(f"{name}={value!r}: give one of {', '.join(choices)}.")
    return value


def _flag(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float | None:
    """`90` (seconds), `30m`, `1h30m`, `7d` -> seconds; empty -> None (no limit)."""
    text = text.strip()
    if not text:
        return None
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    if not re.fullmatch(f"(?:{_DURATION_PART.pattern})+", text):
        raise SettingError(f"{text!r} is not a duration; write e.g. 90 (seconds), 30m, 1h30m or 7d.")
    return sum(float(n) * _UNIT_S[unit] for n, unit in _DURATION_PART.findall(text))


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_size(text: str) -> int | None:
    """`24GB`, `24GiB`, `500M`, `1073741824` -> bytes; empty -> None."""
    if not text.strip():
        return None
    match = _SIZE.fullmatch(text)
    if not match:
        raise SettingError(f"MUSICGEN_DEVICE_MEMORY={text!r}: give a size such as 20GB, 20GiB or 21474836480.")
    unit = (match[2] or "").lower()
    scale = _UNITS[unit[:1]] if "i" not in unit else 2 ** (10 * "kmgt".index(unit[0]) + 10)
    return int(float(match[1]) * scale)


def _checkpoint_overrides(value: str) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in value.split(",") if "=" in item)
    return {name.strip(): source.strip() for name, source in pairs}


def _account(value: str) -> str:
    """MUSICGEN_ACCOUNT: a name as Replicate's usernames are (deployments are named `<account>/<name>`)."""
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?", value):
        raise SettingError(
            f"MUSICGEN_ACCOUNT={value!r}: give a username of lowercase letters, digits, dashes, underscores or dots."
        )
    return value


def _ray_address(value: str) -> str:
    value = value.strip()
    if value.startswith("ray://"):  # Ray 2.60: "Streaming DeploymentHandles are not currently supported" there
        raise SettingError(
            f"MUSICGEN_RAY_ADDRESS={value}: Ray Client (ray://) cannot stream Serve responses. Run the "
            "server on a node of the cluster with MUSICGEN_RAY_ADDRESS=auto, or give the head's "
            "host:port (6379 by default)."
        )
    return value


def _replica_range(value: str) -> tuple[int, int] | None:
    """MUSICGEN_RAY_REPLICAS: "4" -> (4, 4); "1-4" -> (1, 4); "" -> None."""
    value = value.strip()
    if not value:
        return None
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", value)
    bounds = (int(match[1]), int(match[2] or match[1])) if match else (0, 0)
    if not 1 <= bounds[0] <= bounds[1]:
        raise SettingError(f"MUSICGEN_RAY_REPLICAS={value!r}: give a count such as 2, or a range such as 1-4.")
    return bounds


@dataclass(frozen=True)
class Settings:
    weights_dir: Path = Path("./weights")
    max_duration: int = 300
    max_models: int = 0
    device_memory: int | None = None  # bytes; None: free memory at start
    devices: str = "auto"
    decoder: str = "fast"
    step_mode: str = "auto"
    cpu_products: str = "rows"
    max_batch: int = 8
    max_loras: int = 4
    host_loras: int = 32
    max_lora_rank: int = 16
    warmup: str = "default"
    auto_fetch: bool = False
    input_timeout: float = 60.0
    max_input_bytes: int = 100 * 1024 * 1024
    max_input_samples: int = 64_000_000
    max_dataset_bytes: int = 8 * 1024**3
    max_dataset_seconds: float = 4 * 3600.0
    max_dataset_files: int = 2000
    dataset_timeout: float = 600.0
    training_share: float = 0.1
    stream_seconds: float = 1.0
    data_dir: Path = Path("./data")
    api_token: str = ""
    account: str = "local"
    output: str = "url"
    log_format: str = "text"
    shutdown_grace: float = 30.0
    checkpoints: dict[str, str] = field(default_factory=dict)
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    body_min_rate: float = 8192.0  # bytes per second
    max_connections_per_client: int = 100  # 0: no cap
    max_body_bytes: int = 100 * 1024 * 1024  # uploads and data: URIs; a 5-minute stereo wav is ~60 MB
    max_queue: int = 1000
    retention_s: float | None = None
    block_private_urls: bool = False
    ray_address: str = ""
    ray_replicas: tuple[int, int] | None = None  # (min, max); None: one per GPU

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str:
            return env.get(name, ENV_VARS[name][0])

        return cls(
            weights_dir=Path(get("MUSICGEN_WEIGHTS")).expanduser().resolve(),
            max_duration=_number(int, "MUSICGEN_MAX_DURATION", get("MUSICGEN_MAX_DURATION")),
            max_models=_number(int, "MUSICGEN_MAX_MODELS", get("MUSICGEN_MAX_MODELS")),
            device_memory=parse_size(get("MUSICGEN_DEVICE_MEMORY")),
            devices=get("MUSICGEN_DEVICES"),
            decoder=get("MUSICGEN_DECODER"),
            step_mode=get("MUSICGEN_STEP_MODE"),
            cpu_products=_one_of("MUSICGEN_CPU_PRODUCTS", get("MUSICGEN_CPU_PRODUCTS"), ("rows", "torch")),
            max_batch=_number(int, "MUSICGEN_MAX_BATCH", get("MUSICGEN_MAX_BATCH")),
            max_loras=_at_least(0, "MUSICGEN_MAX_LORAS", get("MUSICGEN_MAX_LORAS")),
            host_loras=_at_least(1, "MUSICGEN_HOST_LORAS", get("MUSICGEN_HOST_LORAS")),
            max_lora_rank=_at_least(1, "MUSICGEN_MAX_LORA_RANK", get("MUSICGEN_MAX_LORA_RANK")),
            warmup=get("MUSICGEN_WARMUP"),
            auto_fetch=_flag(get("MUSICGEN_AUTO_FETCH")),
            input_timeout=_number(float, "MUSICGEN_INPUT_TIMEOUT", get("MUSICGEN_INPUT_TIMEOUT")),
            max_input_bytes=_number(int, "MUSICGEN_MAX_INPUT_BYTES", get("MUSICGEN_MAX_INPUT_BYTES")),
            max_input_samples=_number(int, "MUSICGEN_MAX_INPUT_SAMPLES", get("MUSICGEN_MAX_INPUT_SAMPLES")),
            max_dataset_bytes=_number(int, "MUSICGEN_MAX_DATASET_BYTES", get("MUSICGEN_MAX_DATASET_BYTES")),
            max_dataset_seconds=_number(float, "MUSICGEN_MAX_DATASET_SECONDS", get("MUSICGEN_MAX_DATASET_SECONDS")),
            max_dataset_files=_number(int, "MUSICGEN_MAX_DATASET_FILES", get("MUSICGEN_MAX_DATASET_FILES")),
            dataset_timeout=_number(float, "MUSICGEN_DATASET_TIMEOUT", get("MUSICGEN_DATASET_TIMEOUT")),
            training_share=_number(float, "MUSICGEN_TRAINING_SHARE", get("MUSICGEN_TRAINING_SHARE")),
            stream_seconds=_number(float, "MUSICGEN_STREAM_SECONDS", get("MUSICGEN_STREAM_SECONDS")),
            data_dir=Path(get("MUSICGEN_DATA")).expanduser().resolve(),
            api_token=get("MUSICGEN_API_TOKEN"),
            account=_account(get("MUSICGEN_ACCOUNT")),
            output=get("MUSICGEN_OUTPUT"),
            log_format=_one_of("MUSICGEN_LOG_FORMAT", get("MUSICGEN_LOG_FORMAT"), ("text", "json")),
            shutdown_grace=_number(float, "MUSICGEN_SHUTDOWN_GRACE", get("MUSICGEN_SHUTDOWN_GRACE")),
            checkpoints=_checkpoint_overrides(get("MUSICGEN_CHECKPOINTS")),
            header_timeout=_number(float, "MUSICGEN_HEADER_TIMEOUT", get("MUSICGEN_HEADER_TIMEOUT")),
            body_timeout=_number(float, "MUSICGEN_BODY_TIMEOUT", get("MUSICGEN_BODY_TIMEOUT")),
            body_min_rate=_positive(float, "MUSICGEN_BODY_MIN_RATE", get("MUSICGEN_BODY_MIN_RATE")),
            max_connections_per_client=_at_least(
                0, "MUSICGEN_MAX_CONNECTIONS_PER_CLIENT", get("MUSICGEN_MAX_CONNECTIONS_PER_CLIENT")
            ),
            max_body_bytes=_number(int, "MUSICGEN_MAX_BODY_BYTES", get("MUSICGEN_MAX_BODY_BYTES")),
            max_queue=_number(int, "MUSICGEN_MAX_QUEUE", get("MUSICGEN_MAX_QUEUE")),
            retention_s=parse_duration(get("MUSICGEN_RETENTION")),
            block_private_urls=_flag(get("MUSICGEN_BLOCK_PRIVATE_URLS")),
            ray_address=_ray_address(get("MUSICGEN_RAY_ADDRESS")),
            ray_replicas=_replica_range(get("MUSICGEN_RAY_REPLICAS")),
        )

    def with_(self, **changes) -> Settings:
        return replace(self, **changes)
