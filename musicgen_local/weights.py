"""Weights: where they live, what each model_version needs, whether it is here, and fetching it.

`weights/` is a Hugging Face hub cache (`weights/hub/models--<org>--<name>/snapshots/<rev>/...`)
plus a torch hub dir (`weights/hub/checkpoints/`), the layout Replicate's own predictor uses
(HF_HOME = TORCH_HOME = weights/). audiocraft's, transformers' and demucs' own loaders read the
files MusicGen publishes from there unmodified, always with HF_HUB_OFFLINE=1 so that a missing
file fails at once instead of hanging on network retries.

One question, answered once: `ensure(...)` (or `ensure_files(...)`) says what a model needs
(`required_files`, with a custom checkpoint's repo and the codec a LM's compression file points to),
fetches what is missing when allowed, and otherwise raises the one missing-weights message
(`missing_error`), which names the files and the command that fetches them.

Fetching goes through `huggingface_hub.hf_hub_download` into weights/hub, so the loaders find each
file exactly where `weights fetch` put it. Each file is checked against the hub's metadata (size, and
the sha256 / git-sha1 in its ETag) both when it is already on disk and after it is downloaded; a
mismatch names the file. Only the download calls lift HF_HUB_OFFLINE, and put it back afterwards.
`HF_ENDPOINT` (a mirror, or the tests' fake hub) and `HF_TOKEN` are read when a fetch starts.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import WeightsMissingError
from .registry import FETCHABLE_VERSIONS, PRESETS

logger = logging.getLogger(__name__)
Log = Callable[[str], None]

DEFAULT_ENDPOINT = "https://huggingface.co"
CODEC_POINTER_MAX_BYTES = 1 << 20  # a `{'pretrained': repo}` pointer is ~1.5 kB; a real codec is ~240 MB
HASH_CHUNK = 8 << 20

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


def required_files(model_version: str, mbd: bool = False, checkpoint: str | None = None) -> tuple[HubFile, ...]:
    """Every hub file a model_version needs. `checkpoint`: its MUSICGEN_CHECKPOINTS entry, a hub repo that
    replaces the LM repo, or a local directory (then the LM needs nothing from the hub). A LM whose
    compression_state_dict.bin points to another codec repo also needs that one (`with_pointed_codecs`)."""
    preset = PRESETS[model_version]
    if not preset.lm:
        files: tuple[HubFile, ...] = ENCODEC_FILES
    else:
        files = tuple(HubFile(lm_repo(model_version), f) for f in LM_FILES) + T5_FILES
        if preset.melody:
            files += HTDEMUCS_FILES
    files += MBD_FILES if mbd else ()
    if checkpoint is None:
        return files
    lm = lm_repo(model_version)
    if Path(checkpoint).is_dir():
        return tuple(f for f in files if f.repo != lm)
    return tuple(HubFile(checkpoint, f.filename) if f.repo == lm else f for f in files)


def fetch_advice(model_version: str, mbd: bool = False) -> str:
    return (
        f"Fetch them with `musicgen-local weights fetch {model_version}{' --mbd' if mbd else ''}` "
        "(or set MUSICGEN_WEIGHTS to where they are)."
    )


def missing_error(what: str, weights_dir: Path, absent: Iterable[HubFile], advice: str) -> WeightsMissingError:
    """The one missing-weights message: what, where, which files, and how to get them."""
    return WeightsMissingError(f"{what} not in {weights_dir}: missing {', '.join(map(str, absent))}. {advice}")


def ensure(
    weights_dir: Path, model_version: str, mbd: bool, log: Log, checkpoint: str | None = None, auto_fetch: bool = False
) -> None:
    """Before loading `model_version` (and MBD): nothing to do when its files are here; else fetch them
    when `auto_fetch` (MUSICGEN_AUTO_FETCH), or raise the missing-weights message."""
    what = f"Weights for `{model_version}` are"
    ensure_files(
        weights_dir,
        required_files(model_version, mbd, checkpoint),
        what,
        fetch_advice(model_version, mbd),
        log,
        auto_fetch,
        label=f"`{model_version}`",
    )


def ensure_files(
    weights_dir: Path,
    files: Iterable[HubFile],
    what: str,
    advice: str,
    log: Log,
    auto_fetch: bool = False,
    label: str = "",
) -> None:
    """`what` ("Weights for `large` are") and `advice` make the message; `label` names them in the log."""
    weights_dir = Path(weights_dir)
    needed = with_pointed_codecs(weights_dir, files)
    absent = missing(weights_dir, tuple(needed))
    if absent and auto_fetch:
        log(f"Fetching {len(absent)} missing file(s) for {label or what}: {', '.join(map(str, absent))}")
        summary = fetch(weights_dir, absent, log=log, tqdm_class=log_progress_bar(log))
        log(f"Fetched {len(summary.downloaded)} file(s), {size_text(summary.bytes_downloaded)}")
        absent = missing(weights_dir, tuple(with_pointed_codecs(weights_dir, needed)))
    if absent:
        raise missing_error(what, weights_dir, absent, advice)


def require(weights_dir: Path, model_version: str, mbd: bool = False) -> None:
    """Fail fast, naming the files and the command that fetches them (no fetching)."""
    ensure(weights_dir, model_version, mbd, logger.info)


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


class FetchError(WeightsMissingError):
    """Weights are missing and could not be fetched (unknown repo, no network, corrupt download)."""


@dataclass
class FetchSummary:
    downloaded: list[HubFile] = field(default_factory=list)
    verified: list[HubFile] = field(default_factory=list)  # already on disk and matching the hub
    bytes_downloaded: int = 0


def files_for(
    model_versions: Iterable[str], mbd: bool = False, checkpoints: dict[str, str] | None = None
) -> list[HubFile]:
    """Every file the given model_versions need, in order, without repeats."""
    files: dict[HubFile, None] = {}
    for version in model_versions:
        files.update(dict.fromkeys(required_files(version, mbd, (checkpoints or {}).get(version))))
    return list(files)


def codec_pointer(path: Path) -> str | None:
    """The repo a LM's compression_state_dict.bin defers to (`{'pretrained': 'facebook/encodec_32khz'}`), if any."""
    if path.stat().st_size > CODEC_POINTER_MAX_BYTES:
        return None  # a full EnCodec state, not a pointer: no need to unpickle 240 MB to know that
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 -- torch raises many types on a non-pickle; not a pointer either way
        return None
    pretrained = state.get("pretrained") if isinstance(state, dict) else None
    return pretrained if isinstance(pretrained, str) else None


def pointed_files(repo: str) -> tuple[HubFile, ...]:
    """Files of the codec repo a pointer names (transformers' EnCodec layout)."""
    return tuple(HubFile(repo, f.filename) for f in ENCODEC_FILES)


def with_pointed_codecs(weights_dir: Path, files: Iterable[HubFile]) -> list[HubFile]:
    """`files` plus the codec repos that the compression files already on disk point to."""
    planned = dict.fromkeys(files)
    for file in list(planned):
        local = cached_path(weights_dir, file) if file.filename == "compression_state_dict.bin" else None
        repo = codec_pointer(local) if local is not None else None
        if repo:
            planned.update(dict.fromkeys(pointed_files(repo)))
    return list(planned)


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    if algorithm == "sha1":  # git's blob id: sha1 over "blob <size>\0" + content
        h.update(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def mismatch(path: Path, size: int | None, etag: str | None) -> str | None:
    """Why `path` is not the file the hub describes (None when it is)."""
    on_disk = path.stat().st_size
    if size is not None and on_disk != size:
        return f"partial or corrupt: {on_disk} bytes on disk, the hub has {size}"
    algorithm = {64: "sha256", 40: "sha1"}.get(len(etag or "")) if re.fullmatch(r"[0-9a-f]+", etag or "") else None
    if algorithm is None:
        return None  # an ETag that is not a content hash: the size check is all we can do
    digest = _digest(path, algorithm)
    if digest != etag:
        return f"corrupt: {algorithm} {digest[:16]}… on disk, the hub has {etag[:16]}…"
    return None


# ---------------------------------------------------------------------------------------------- downloading


@contextmanager
def _online() -> Iterator[None]:
    """Lift huggingface_hub's offline switch for this block only (it is read per request from `constants`)."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _endpoint() -> str:
    # huggingface_hub reads HF_ENDPOINT once at import, before configure_environment or a test could set it.
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


@contextmanager
def _hub_errors(file: HubFile, endpoint: str) -> Iterator[None]:
    """huggingface_hub's and its HTTP client's exceptions, as one FetchError that says what to do."""
    import httpx2  # huggingface_hub's HTTP client: connection failures surface as its errors
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RemoteEntryNotFoundError, RepositoryNotFoundError

    try:
        yield
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise FetchError(
            f"Repository `{file.repo}` was not found on {endpoint} (needed for {file.filename}). "
            "Check the name; for a private or gated repo set HF_TOKEN to a token that can read it."
        ) from e
    except RemoteEntryNotFoundError as e:
        raise FetchError(f"`{file.filename}` is not in `{file.repo}` on {endpoint}.") from e
    except (httpx2.TransportError, HfHubHTTPError, OSError) as e:
        raise FetchError(
            f"Could not fetch {file} from {endpoint}: {e}. Check the network (or HF_ENDPOINT) and run the fetch "
            "again (files already complete are kept), or copy the weights into place and set MUSICGEN_AUTO_FETCH=0."
        ) from e


def _discard(path: Path) -> None:
    """Remove a cached file and the blob its snapshot link points to, so the next download replaces both."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def fetch_file(weights_dir: Path, file: HubFile, log: Log, tqdm_class=None) -> tuple[Path, bool]:
    """Make `file` present and verified; returns (path, whether it was downloaded)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache

    endpoint, cache = _endpoint(), hub_cache(weights_dir)
    with _online(), _hub_errors(file, endpoint):
        meta = get_hf_file_metadata(hf_hub_url(file.repo, file.filename, endpoint=endpoint), endpoint=endpoint)
        local = try_to_load_from_cache(file.repo, file.filename, cache_dir=str(cache), revision=meta.commit_hash)
        if isinstance(local, str):
            problem = mismatch(Path(local), meta.size, meta.etag)
            if problem is None:
                return Path(local), False
            log(f"{file}: {problem}; downloading it again")
            _discard(Path(local))
        log(f"Downloading {file} ({size_text(meta.size)})")
        path = Path(
            hf_hub_download(file.repo, file.filename, cache_dir=str(cache), endpoint=endpoint, tqdm_class=tqdm_class)
        )
    problem = mismatch(path, meta.size, meta.etag)
    if problem is not None:
        _discard(path)
        raise FetchError(f"Downloaded {file} from {endpoint} but it is {problem}. Run the fetch again.")
    return path, True


def fetch(weights_dir: Path, files: Iterable[HubFile], log: Log = logger.info, tqdm_class=None) -> FetchSummary:
    """Fetch and verify `files`, plus the codec repo any LM's compression file points to."""
    weights_dir = Path(weights_dir)
    queue, summary = list(dict.fromkeys(files)), FetchSummary()
    for file in queue:  # grows while iterating: pointers are only known once their file is here
        path, downloaded = fetch_file(weights_dir, file, log, tqdm_class)
        (summary.downloaded if downloaded else summary.verified).append(file)
        summary.bytes_downloaded += path.stat().st_size if downloaded else 0
        repo = codec_pointer(path) if file.filename == "compression_state_dict.bin" else None
        if repo:
            queue.extend(f for f in pointed_files(repo) if f not in queue)
    return summary


def size_text(n: int | None) -> str:
    if n is None:
        return "size unknown"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


# ---------------------------------------------------------------------------------------------- first use


def log_progress_bar(log: Log, every_s: float = 5.0):
    """A tqdm class whose bars go to `log` as lines (for a prediction's logs) instead of a terminal."""
    from tqdm.auto import tqdm

    class LogBar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            # The terminal output goes nowhere: `display` below hands each refresh to `log` instead.
            super().__init__(*args, **{**kwargs, "mininterval": every_s, "disable": False, "file": io.StringIO()})

        def display(self, msg=None, pos=None):  # called at most every `every_s`, and on close
            log(self.__str__())
            return True

    return LogBar


def listing(weights_dir: Path) -> list[tuple[str, HubFile, int | None]]:
    """(model_version or "mbd", file, size on disk or None when missing) for everything fetchable."""
    rows = []
    for group, files in [(v, required_files(v)) for v in FETCHABLE_VERSIONS] + [("mbd", MBD_FILES)]:
        for file in with_pointed_codecs(weights_dir, files):
            local = cached_path(weights_dir, file)
            rows.append((group, file, local.stat().st_size if local is not None else None))
    return rows
