"""Download what a model_version needs from the Hugging Face hub into weights/, and check it.

Everything goes through `huggingface_hub.hf_hub_download` into weights/hub (the cache layout
`weights.py` describes), so the loaders find it exactly where `weights fetch` put it. Each file is
checked against the hub's metadata (size, and the sha256 / git-sha1 in its ETag) both when it is
already on disk and after it is downloaded; a mismatch names the file.

Reading weights always runs with HF_HUB_OFFLINE=1 (see `weights.configure_environment`); only the
calls in this module lift it, and put it back afterwards. `HF_ENDPOINT` (a mirror, or the tests'
fake hub) and `HF_TOKEN` are read when a fetch starts, not at import.
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

from . import weights as W
from .errors import WeightsMissingError
from .registry import LM_VERSIONS, MODEL_VERSIONS, PRESETS

logger = logging.getLogger(__name__)
Log = Callable[[str], None]

DEFAULT_ENDPOINT = "https://huggingface.co"
CODEC_POINTER_MAX_BYTES = 1 << 20  # a `{'pretrained': repo}` pointer is ~1.5 kB; a real codec is ~240 MB
HASH_CHUNK = 8 << 20


class FetchError(WeightsMissingError):
    """Weights are missing and could not be fetched (unknown repo, no network, corrupt download)."""


@dataclass
class FetchSummary:
    downloaded: list[W.HubFile] = field(default_factory=list)
    verified: list[W.HubFile] = field(default_factory=list)  # already on disk and matching the hub
    bytes_downloaded: int = 0


# ---------------------------------------------------------------------------------------------- what to fetch


def required_files(model_version: str, mbd: bool = False, checkpoint: str | None = None) -> tuple[W.HubFile, ...]:
    """`weights.required_files`, with the LM repo replaced by a custom checkpoint's hub repo when one is
    configured (MUSICGEN_CHECKPOINTS); a checkpoint that is a local directory needs nothing from the hub."""
    files = W.required_files(model_version, mbd)
    if checkpoint is None:
        return files
    lm = W.lm_repo(model_version)
    if Path(checkpoint).is_dir():
        return tuple(f for f in files if f.repo != lm)
    return tuple(W.HubFile(checkpoint, f.filename) if f.repo == lm else f for f in files)


def files_for(
    model_versions: Iterable[str], mbd: bool = False, checkpoints: dict[str, str] | None = None
) -> list[W.HubFile]:
    """Every file the given model_versions need, in order, without repeats."""
    files: dict[W.HubFile, None] = {}
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


def pointed_files(repo: str) -> tuple[W.HubFile, ...]:
    """Files of the codec repo a pointer names (transformers' EnCodec layout)."""
    return tuple(W.HubFile(repo, f.filename) for f in W.ENCODEC_FILES)


def with_pointed_codecs(weights_dir: Path, files: Iterable[W.HubFile]) -> list[W.HubFile]:
    """`files` plus the codec repos that the compression files already on disk point to."""
    planned = dict.fromkeys(files)
    for file in list(planned):
        local = W.cached_path(weights_dir, file) if file.filename == "compression_state_dict.bin" else None
        repo = codec_pointer(local) if local is not None else None
        if repo:
            planned.update(dict.fromkeys(pointed_files(repo)))
    return list(planned)


# ---------------------------------------------------------------------------------------------- checking


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
def _hub_errors(file: W.HubFile, endpoint: str) -> Iterator[None]:
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


def fetch_file(weights_dir: Path, file: W.HubFile, log: Log, tqdm_class=None) -> tuple[Path, bool]:
    """Make `file` present and verified; returns (path, whether it was downloaded)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache

    endpoint, cache = _endpoint(), W.hub_cache(weights_dir)
    with _online(), _hub_errors(file, endpoint):
        meta = get_hf_file_metadata(hf_hub_url(file.repo, file.filename, endpoint=endpoint), endpoint=endpoint)
        local = try_to_load_from_cache(file.repo, file.filename, cache_dir=str(cache), revision=meta.commit_hash)
        if isinstance(local, str):
            problem = mismatch(Path(local), meta.size, meta.etag)
            if problem is None:
                return Path(local), False
            log(f"{file}: {problem}; downloading it again")
            _discard(Path(local))
        log(f"Downloading {file} ({_size(meta.size)})")
        path = Path(
            hf_hub_download(file.repo, file.filename, cache_dir=str(cache), endpoint=endpoint, tqdm_class=tqdm_class)
        )
    problem = mismatch(path, meta.size, meta.etag)
    if problem is not None:
        _discard(path)
        raise FetchError(f"Downloaded {file} from {endpoint} but it is {problem}. Run the fetch again.")
    return path, True


def fetch(weights_dir: Path, files: Iterable[W.HubFile], log: Log = logger.info, tqdm_class=None) -> FetchSummary:
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


def _size(n: int | None) -> str:
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


def ensure_available(weights_dir: Path, model_version: str, mbd: bool, log: Log, checkpoint: str | None = None) -> None:
    """Download whatever `model_version` (and MBD) still needs; no network when nothing is missing.
    `checkpoint`: the MUSICGEN_CHECKPOINTS entry for this model_version, if any."""
    weights_dir = Path(weights_dir)
    needed = with_pointed_codecs(weights_dir, required_files(model_version, mbd, checkpoint))
    absent = W.missing(weights_dir, tuple(needed))
    if not absent:
        return
    log(f"Fetching {len(absent)} missing file(s) for `{model_version}`: {', '.join(map(str, absent))}")
    summary = fetch(weights_dir, absent, log=log, tqdm_class=log_progress_bar(log))
    log(f"Fetched {len(summary.downloaded)} file(s), {_size(summary.bytes_downloaded)}")
    W.require(weights_dir, model_version, mbd, files=tuple(with_pointed_codecs(weights_dir, needed)))


# ---------------------------------------------------------------------------------------------- CLI


def listing(weights_dir: Path) -> list[tuple[str, W.HubFile, int | None]]:
    """(model_version or "mbd", file, size on disk or None when missing) for everything fetchable."""
    rows = []
    for group, files in [(v, W.required_files(v)) for v in MODEL_VERSIONS] + [("mbd", W.MBD_FILES)]:
        for file in with_pointed_codecs(weights_dir, files):
            local = W.cached_path(weights_dir, file)
            rows.append((group, file, local.stat().st_size if local is not None else None))
    return rows


def _cmd_list(args, settings) -> int:
    rows = listing(settings.weights_dir)
    out = sys.stdout
    out.write(f"weights in {settings.weights_dir}\n")
    for group in dict.fromkeys(r[0] for r in rows):
        mine = [r for r in rows if r[0] == group]
        absent = sum(size is None for _, _, size in mine)
        total = sum(size or 0 for _, _, size in mine)
        out.write(f"{group:<20} {'complete' if not absent else f'{absent} missing':<10} {_size(total):>9}\n")
        for _, file, size in mine:
            out.write(f"  {'present' if size is not None else 'missing':<8} {_size(size) if size else '':>9}  {file}\n")
    return 0


def _cmd_fetch(args, settings) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # no-op when the CLI set up logging
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one INFO line per HEAD/GET drowns the progress
    unknown = [v for v in args.model_versions if v not in MODEL_VERSIONS]
    if unknown:
        logger.error("Unknown model_version %s; choose from %s", ", ".join(unknown), ", ".join(MODEL_VERSIONS))
        return 2
    versions = list(args.model_versions)
    versions += list(LM_VERSIONS) if args.all else []
    versions += [v for v in LM_VERSIONS if PRESETS[v].melody] if args.melody else []
    versions = list(dict.fromkeys(versions or ["stereo-melody-large"]))  # schema's default model_version
    try:
        summary = fetch(settings.weights_dir, files_for(versions, args.mbd, settings.checkpoints), log=logger.info)
    except FetchError as e:
        logger.error("%s", e)
        return 1
    logger.info(
        "%d file(s) downloaded (%s), %d already present and verified, in %s",
        len(summary.downloaded),
        _size(summary.bytes_downloaded),
        len(summary.verified),
        settings.weights_dir,
    )
    return 0


def register_cli(weights_subparsers) -> None:
    """Add `weights fetch` and `weights list` to the CLI's `weights` subparsers."""
    p = weights_subparsers.add_parser(
        "fetch", help="download weights from the Hugging Face hub (HF_TOKEN, HF_ENDPOINT)"
    )
    p.add_argument(
        "model_versions",
        nargs="*",
        metavar="MODEL_VERSION",
        help=f"any of {', '.join(MODEL_VERSIONS)} (default: stereo-melody-large)",
    )
    p.add_argument("--all", action="store_true", help="every MusicGen model_version")
    p.add_argument("--melody", action="store_true", help="the two melody model_versions (and htdemucs)")
    p.add_argument("--mbd", action="store_true", help="also multi-band diffusion (multi_band_diffusion=true)")
    p.set_defaults(func=_cmd_fetch)
    p = weights_subparsers.add_parser("list", help="show which weights are present, missing, and their sizes")
    p.set_defaults(func=_cmd_list)
