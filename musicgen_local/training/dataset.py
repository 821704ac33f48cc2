"""A training's dataset: what the user sent, cut into 30 s pieces with descriptions.

`dataset_path` is a zip, a tar (plain, gzip, bzip2 or xz), or one audio file, recognised by content,
not by name (the Node client uploads a buffer named `buffer_<time>`). Unpacking is the hostile part:
- a member named with `..`, an absolute path, a link or a device is refused, never written;
- sizes are checked before unpacking and counted while unpacking (a zip's declared sizes can lie),
  against MUSICGEN_MAX_DATASET_BYTES; the member count against MUSICGEN_MAX_DATASET_FILES;
- nothing is written outside the training's own folder.

Every audio file (anything ffmpeg decodes) is probed first (a dataset whose headers already say it is too long
is refused before anything decodes), then decoded as a stream to 32 kHz with the model's channels and cut into
30 s pieces as it comes (a last piece shorter than 1 s is dropped, as is a file shorter than 1 s): what counts
against MUSICGEN_MAX_DATASET_SECONDS is what decodes, whatever a header says, and memory holds one piece at a time.
Each piece is optionally stripped of its vocals (htdemucs) and labelled with its tempo and key (librosa, see
`labels`), then written to disk (16-bit FLAC). A `.txt` beside an audio file (same name) is its description, at
most a prompt's length; `one_same_description` replaces them all.

Every step (the download, the unpacking, each file's probe and decode) checks the training's cancel event and runs
under MUSICGEN_DATASET_TIMEOUT (`steps`). Once the pieces are cut, what they were cut from is removed.
"""

from __future__ import annotations

import errno
import json
import shutil
import tarfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..errors import Cancelled, UserError
from .labels import describe_music, estimate_bpm, estimate_key, htdemucs_separator
from .params import MAX_DESCRIPTION_CHARS
from .steps import TIMEOUT_SETTING, Step, decode_pieces, run

__all__ = ["describe_music", "estimate_bpm", "estimate_key"]  # the labels, where callers found them before
SAMPLE_RATE = 32000
PIECE_S = 30
MIN_S = 1.0
AUDIO_EXTENSIONS = {".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".aif", ".aiff", ".wma", ".webm"}
PIECES = "pieces.json"


@dataclass(frozen=True)
class Piece:
    wav: Path  # a wav at 32 kHz with the model's channels, at most 30 s
    description: str


@dataclass(frozen=True)
class DatasetLimits:
    max_bytes: int  # what the dataset may take on disk, downloaded and unpacked (MUSICGEN_MAX_DATASET_BYTES)
    max_seconds: float  # audio in all, as decoded (MUSICGEN_MAX_DATASET_SECONDS)
    timeout_s: float = 600.0  # each step: download, unpacking, a file's probe or decode (MUSICGEN_DATASET_TIMEOUT)
    max_files: int = 2000  # members of an archive (MUSICGEN_MAX_DATASET_FILES)
    check_url: Callable[[str], Any] = lambda url: None  # see inputs.Limits.check_url

    def step(self, what: str, canceled: threading.Event) -> Step:
        return Step(what, canceled, self.timeout_s)


def limits_from(settings) -> DatasetLimits:
    from ..inputs import input_url_check

    return DatasetLimits(
        settings.max_dataset_bytes,
        settings.max_dataset_seconds,
        settings.dataset_timeout,
        settings.max_dataset_files,
        check_url=input_url_check(settings.block_private_urls, "dataset_path"),
    )


# ------------------------------------------------------------------------------------------ entry points


def prepare_once(
    ref: str,
    folder: Path,
    params,
    channels: int,
    limits: DatasetLimits,
    canceled: threading.Event,
    log: Callable[[str], None],
) -> list[Piece]:
    """The pieces of `ref` in `folder`: made once (fetched, unpacked, decoded, cut, labelled), then read back
    (a training resumed after a restart does not prepare its dataset again)."""
    done = folder / PIECES
    if done.is_file():
        pieces = [Piece(Path(p["wav"]), p["description"]) for p in json.loads(done.read_text())]
        log(f"Dataset: {len(pieces)} pieces, prepared before the restart.")
        return pieces
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        source = fetch_dataset(ref, folder / "download", limits, canceled)
        pieces = prepare(
            source,
            folder,
            channels=channels,
            one_same_description=params.one_same_description,
            auto_labeling=params.auto_labeling,
            drop_vocals=params.drop_vocals,
            limits=limits,
            canceled=canceled,
            log=log,
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # half a dataset is of no use: a next try starts over
        raise
    finally:
        for cut_from in ("download", "files"):  # up to MUSICGEN_MAX_DATASET_BYTES each; the pieces are what trains
            shutil.rmtree(folder / cut_from, ignore_errors=True)
    done.write_text(json.dumps([{**asdict(p), "wav": str(p.wav)} for p in pieces]))
    return pieces


def fetch_dataset(ref: str, work_dir: Path, limits: DatasetLimits, canceled: threading.Event) -> Path:
    """A local file holding `dataset_path`'s bytes (an http(s) URL, a data: URI, or a local path the front door
    vouched for), downloaded within MUSICGEN_MAX_DATASET_BYTES."""
    from .. import inputs

    download = inputs.Limits(
        timeout_s=limits.timeout_s,
        max_bytes=limits.max_bytes,
        check_url=limits.check_url,
        name="dataset_path",
        size_setting=BYTES_SETTING,
        time_setting=TIMEOUT_SETTING,
    )
    try:
        return inputs.fetch(ref, work_dir, download, canceled)
    except (UserError, Cancelled):  # a cancel is the user's word, not a network error
        raise
    except Exception as exc:  # noqa: BLE001 - a network error: the user's URL
        raise UserError(f"`dataset_path` could not be downloaded: {exc}") from None


BYTES_SETTING = "MUSICGEN_MAX_DATASET_BYTES"
SECONDS_SETTING = "MUSICGEN_MAX_DATASET_SECONDS"
FILES_SETTING = "MUSICGEN_MAX_DATASET_FILES"


def prepare(
    source: Path,
    work_dir: Path,
    *,
    channels: int,
    one_same_description: str | None,
    auto_labeling: bool,
    drop_vocals: bool,
    limits: DatasetLimits,
    canceled: threading.Event,
    log: Callable[[str], None],
    separate: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[Piece]:
    files = work_dir / "files"
    files.mkdir(parents=True, exist_ok=True)
    audio = _unpack(source, files, limits, limits.step("unpacking `dataset_path`", canceled))
    if not audio:
        raise UserError(
            "`dataset_path` holds no audio file (wav, mp3, flac, ogg...). Put your songs in a zip or tar, "
            "or send one audio file."
        )
    log(f"Dataset: {len(audio)} audio files.")
    described = {path: _description(path, one_same_description, files) for path in audio}
    _refuse_what_headers_say(audio, limits, canceled)
    if drop_vocals and separate is None:
        separate = htdemucs_separator(channels)

    def describe(path: Path, wav: np.ndarray) -> str:
        text = described[path]
        return ", ".join(part for part in (text, describe_music(wav)) if part) if auto_labeling else text

    cutter = _Cutter(work_dir / "pieces", limits, describe, separate if drop_vocals else None)
    for path in audio:
        if not cutter.cut(path, channels, limits.step(f"decoding {path.name}", canceled)):
            log(f"Skipped {path.name}: shorter than {MIN_S:.0f} s.")
    if not cutter.pieces:
        raise UserError(f"Every audio file in `dataset_path` is shorter than {MIN_S:.0f} s: nothing to train on.")
    log(
        f"Dataset: {len(cutter.pieces)} pieces of at most {PIECE_S} s, {cutter.kept:.0f} s of audio"
        f"{', vocals removed' if drop_vocals else ''}{', tempo and key labelled' if auto_labeling else ''}."
    )
    return cutter.pieces


def _refuse_what_headers_say(audio: list[Path], limits: DatasetLimits, canceled: threading.Event) -> None:
    """A dataset whose files' headers already add up past the limit is refused before anything decodes (the
    headers are not trusted the other way: what decodes is counted as it decodes)."""
    lengths = {path: _probe(path, limits.step(f"reading {path.name}", canceled)) for path in audio}
    total = sum(lengths.values())
    if total > limits.max_seconds:
        longest = max(lengths, key=lengths.get)
        raise UserError(
            f"The dataset holds {_hours(total)} of audio (the longest file, {longest.name}, "
            f"{_hours(lengths[longest])}); this server trains on at most {_hours(limits.max_seconds)} "
            f"({SECONDS_SETTING})."
        )


class _Cutter:
    """Audio files into pieces on disk, one piece in memory at a time; the seconds decoded are counted against
    MUSICGEN_MAX_DATASET_SECONDS as they decode, and decoding stops at the limit."""

    def __init__(
        self,
        out_dir: Path,
        limits: DatasetLimits,
        describe: Callable[[Path, np.ndarray], str],
        separate: Callable[[np.ndarray], np.ndarray] | None,
    ) -> None:
        self.out_dir, self.limit, self.describe, self.separate = out_dir, limits.max_seconds, describe, separate
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.pieces: list[Piece] = []
        self.seconds = self.kept = 0.0  # decoded; in the pieces kept

    def cut(self, path: Path, channels: int, step: Step) -> int:
        """The pieces `path` gave."""
        made = 0
        for index, wav in enumerate(_pieces_of(path, channels, step)):
            self._count(path, wav.shape[1] / SAMPLE_RATE)
            if wav.shape[1] < MIN_S * SAMPLE_RATE:
                continue
            kept = self.separate(wav) if self.separate is not None else wav
            target = self.out_dir / f"{len(self.pieces):05d}-{index:03d}.flac"
            _write_piece(target, kept)
            self.pieces.append(Piece(target, self.describe(path, kept)))
            self.kept += wav.shape[1] / SAMPLE_RATE
            made += 1
        return made

    def _count(self, path: Path, seconds: float) -> None:
        self.seconds += seconds
        if self.seconds > self.limit:
            raise UserError(
                f"The dataset decodes to more than {_hours(self.limit)} of audio, the most this server trains on "
                f"({SECONDS_SETTING}); decoding stopped there, in {path.name} (a file can hold more audio than its "
                "header says)."
            )


# ------------------------------------------------------------------------------------------ unpacking


def _unpack(source: Path, dest: Path, limits: DatasetLimits, step: Step) -> list[Path]:
    """The audio files of `source` (an archive, unpacked into `dest`, or itself)."""
    if zipfile.is_zipfile(source):
        _unzip(source, dest, limits, step)
    elif _is_tar(source):
        _untar(source, dest, limits, step)
    elif _probe_is_audio(source, step):
        return [source]
    else:
        raise UserError("`dataset_path` is neither an archive (zip, tar, tar.gz) nor an audio file ffmpeg can decode.")
    found = sorted(p for p in dest.rglob("*") if p.is_file() and _is_audio_member(p, dest))
    return [p for p in found if p.suffix.lower() in AUDIO_EXTENSIONS or _probe_is_audio(p, step)]


def _is_tar(path: Path) -> bool:
    try:
        with tarfile.open(path):  # plain, gz, bz2 or xz, by content
            return True
    except (tarfile.TarError, OSError, EOFError):
        return False


def _is_audio_member(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return not any(part.startswith(".") or part == "__MACOSX" for part in parts) and path.suffix.lower() != ".txt"


def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or name.startswith(("/", "\\")) or ":" in path.parts[0]:
        raise UserError(
            f"`dataset_path` holds a file named {name!r}, which points outside the archive; such archives are refused."
        )
    return path


class _Budget:
    def __init__(self, limits: DatasetLimits) -> None:
        self.left, self.limits = limits.max_bytes, limits

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise UserError(
                f"`dataset_path` unpacks to more than {self.limits.max_bytes} bytes "
                f"({BYTES_SETTING}); send a smaller dataset or raise the setting."
            )


def _copy(src, dest: Path, budget: _Budget, step: Step, name: str) -> None:
    """One archive member (`name`, as the archive calls it) to `dest`; an archive the file system cannot hold as it
    is (a file and a folder of one name, a name too long) is refused naming the member, never an internal error."""
    step.check()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        out = dest.open("wb")
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        raise UserError(
            f"`dataset_path` holds {name!r} where it also holds a file or a folder of the same name; "
            "such archives are refused."
        ) from None
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        raise UserError(f"`dataset_path` holds a file whose name is too long to write: {name[:80]!r}...") from None
    with out:
        while chunk := src.read(1 << 20):
            budget.take(len(chunk))  # counted as written: a member's declared size is not trusted
            out.write(chunk)
            step.check()


def _unzip(source: Path, dest: Path, limits: DatasetLimits, step: Step) -> None:
    with zipfile.ZipFile(source) as z:
        members = z.infolist()
        _count(len(members), limits)
        if sum(m.file_size for m in members) > limits.max_bytes:
            _Budget(limits).take(sum(m.file_size for m in members))
        budget = _Budget(limits)
        for member in members:
            name = _safe_name(member.filename)
            if member.is_dir():
                continue
            if (member.external_attr >> 16) & 0o170000 == 0o120000:  # a symlink stored by a Unix zip
                raise UserError(f"`dataset_path` holds a link, {member.filename!r}; archives with links are refused.")
            with z.open(member) as src:
                _copy(src, dest / name, budget, step, member.filename)


def _untar(source: Path, dest: Path, limits: DatasetLimits, step: Step) -> None:
    with tarfile.open(source) as tar:
        budget, declared, count = _Budget(limits), 0, 0
        for member in tar:  # streamed: a tar's index is its members, read one by one
            count += 1
            _count(count, limits)
            step.check()
            name = _safe_name(member.name)
            if member.isdir():
                continue
            if not member.isfile():
                raise UserError(
                    f"`dataset_path` holds {member.name!r}, which is a link or a device; archives "
                    "holding those are refused."
                )
            declared += member.size
            if declared > limits.max_bytes:
                budget.take(declared)
            src = tar.extractfile(member)
            if src is not None:
                _copy(src, dest / name, budget, step, member.name)


def _count(n: int, limits: DatasetLimits) -> None:
    if n > limits.max_files:
        raise UserError(
            f"`dataset_path` holds more than {limits.max_files} files ({FILES_SETTING}); send at most that many."
        )


# ------------------------------------------------------------------------------------------ audio


def _probe(path: Path, step: Step) -> float:
    """The file's length as its header gives it (a first, cheap refusal: what decodes is what counts)."""
    from .. import inputs

    code, out, _ = run(inputs.probe_command(path), step)
    try:
        return inputs.probed(out.decode(errors="replace") if code == 0 else "").seconds
    except UserError:
        raise UserError(f"{path.name} in `dataset_path` is not audio ffmpeg can decode.") from None


def _probe_is_audio(path: Path, step: Step) -> bool:
    try:
        return _probe(path, step) > 0
    except UserError:
        return False


def _pieces_of(path: Path, channels: int, step: Step) -> Iterator[np.ndarray]:
    """The file as [C, T] float32 pieces of PIECE_S at 32 kHz (the last one shorter), decoded as they are used."""
    from .. import inputs

    cmd = ["ffmpeg", "-v", "error", "-nostdin", *inputs.PLAIN_AUDIO_ONLY, "-i", str(path)]
    cmd += ["-f", "f32le", "-ac", str(channels), "-ar", str(SAMPLE_RATE), "-"]
    try:
        with closing(decode_pieces(cmd, channels, PIECE_S * SAMPLE_RATE, step)) as pieces:
            yield from pieces
    except UserError as exc:
        if "MUSICGEN_" in str(exc):  # the step's timeout, which names its setting
            raise
        raise UserError(f"{path.name} in `dataset_path` could not be decoded: {exc}") from None


def _write_piece(path: Path, wav: np.ndarray) -> None:
    """16-bit FLAC: a quarter of the float32 samples' size on disk, and what the trainer reads back as float32."""
    import soundfile

    np.clip(wav, -1.0, 1.0, out=wav)  # in place: no second copy of the piece
    soundfile.write(str(path), wav.T, SAMPLE_RATE, format="FLAC", subtype="PCM_16")


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds:.0f} s"


def _description(audio: Path, one_same: str | None, root: Path) -> str:
    """The audio's description: `one_same`, else its .txt (at most MAX_DESCRIPTION_CHARS, as a prompt), else none."""
    if one_same is not None:
        return one_same
    text = audio.with_suffix(".txt")
    if not text.is_file():
        return ""
    too_long = UserError(
        f"The description {text.relative_to(root) if text.is_relative_to(root) else text.name} is longer than "
        f"{MAX_DESCRIPTION_CHARS} characters (a prompt's limit: T5 reads it whole); shorten it."
    )
    if text.stat().st_size > 4 * MAX_DESCRIPTION_CHARS + 16:  # more bytes than that many characters take in UTF-8
        raise too_long
    try:
        description = text.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise UserError(f"The description {text.name} is not UTF-8 text; save it as UTF-8.") from None
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise too_long
    return description
