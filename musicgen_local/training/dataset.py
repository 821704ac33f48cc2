"""A training's dataset: what the user sent, cut into 30 s pieces with descriptions.

`dataset_path` is a zip, a tar (plain, gzip, bzip2 or xz), or one audio file, recognised by content,
not by name (the Node client uploads a buffer named `buffer_<time>`). Unpacking is the hostile part:
- a member named with `..`, an absolute path, a link or a device is refused, never written;
- sizes are checked before unpacking and counted while unpacking (a zip's declared sizes can lie),
  against MUSICGEN_MAX_DATASET_BYTES; the member count against MAX_FILES;
- nothing is written outside the training's own folder.

Every audio file (anything ffmpeg decodes) is probed before it is decoded (its length counts against
MUSICGEN_MAX_DATASET_SECONDS), decoded to 32 kHz with the model's channels, cut into 30 s pieces
(a last piece shorter than 1 s is dropped, as is a file shorter than 1 s), and optionally stripped of
its vocals (htdemucs) and labelled with its tempo and key (librosa). A `.txt` beside an audio file
(same name) is its description; `one_same_description` replaces them all.

Genre, mood and instrument labels, which the hosted fine-tuner adds with essentia's TensorFlow
models, are not offered: those model files cannot be shipped with this project.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import threading
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..errors import Cancelled, UserError

SAMPLE_RATE = 32000
PIECE_S = 30
MIN_S = 1.0
MAX_FILES = 10_000
AUDIO_EXTENSIONS = {".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".aif", ".aiff", ".wma", ".webm"}
PIECES = "pieces.json"


@dataclass(frozen=True)
class Piece:
    wav: Path  # a wav at 32 kHz with the model's channels, at most 30 s
    description: str


@dataclass(frozen=True)
class DatasetLimits:
    max_bytes: int  # what the dataset may take on disk, downloaded and unpacked (MUSICGEN_MAX_DATASET_BYTES)
    max_seconds: float  # audio in all (MUSICGEN_MAX_DATASET_SECONDS)
    timeout_s: float = 3600.0  # downloading it
    check_url: Callable[[str], Any] = lambda url: None  # see inputs.Limits.check_url


def limits_from(settings) -> DatasetLimits:
    from ..inputs import input_url_check

    return DatasetLimits(
        settings.max_dataset_bytes,
        settings.max_dataset_seconds,
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
        time_setting="its timeout",
    )
    try:
        return inputs.fetch(ref, work_dir, download, canceled)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a network error: the user's URL
        raise UserError(f"`dataset_path` could not be downloaded: {exc}") from None


BYTES_SETTING = "MUSICGEN_MAX_DATASET_BYTES"
SECONDS_SETTING = "MUSICGEN_MAX_DATASET_SECONDS"


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
    audio = _unpack(source, files, limits, canceled)
    if not audio:
        raise UserError(
            "`dataset_path` holds no audio file (wav, mp3, flac, ogg...). Put your songs in a zip or tar, "
            "or send one audio file."
        )
    log(f"Dataset: {len(audio)} audio files.")
    described = {path: _description(path, one_same_description) for path in audio}
    lengths = {path: _probe(path) for path in audio}
    total = sum(lengths.values())
    if total > limits.max_seconds:
        longest = max(lengths, key=lengths.get)
        raise UserError(
            f"The dataset holds {_hours(total)} of audio (the longest file, {longest.name}, "
            f"{_hours(lengths[longest])}); this server trains on at most {_hours(limits.max_seconds)} "
            f"({SECONDS_SETTING})."
        )
    if drop_vocals and separate is None:
        separate = _htdemucs_separator(channels)
    out_dir = work_dir / "pieces"
    out_dir.mkdir(exist_ok=True)
    pieces: list[Piece] = []
    for path in audio:
        if canceled.is_set():
            raise Cancelled()
        if lengths[path] < MIN_S:
            log(f"Skipped {path.name}: shorter than {MIN_S:.0f} s.")
            continue
        wav = _decode(path, channels)
        if drop_vocals:
            wav = separate(wav)
        for index, start in enumerate(range(0, wav.shape[1], PIECE_S * SAMPLE_RATE)):
            chunk = wav[:, start : start + PIECE_S * SAMPLE_RATE]
            if chunk.shape[1] < MIN_S * SAMPLE_RATE:
                continue
            text = described[path]
            if auto_labeling:
                text = ", ".join(part for part in (text, describe_music(chunk)) if part)
            target = out_dir / f"{len(pieces):05d}-{index:03d}.wav"
            _write_wav(target, chunk)
            pieces.append(Piece(target, text))
    if not pieces:
        raise UserError(f"Every audio file in `dataset_path` is shorter than {MIN_S:.0f} s: nothing to train on.")
    seconds = sum(_seconds(p.wav) for p in pieces)
    log(
        f"Dataset: {len(pieces)} pieces of at most {PIECE_S} s, {seconds:.0f} s of audio"
        f"{', vocals removed' if drop_vocals else ''}{', tempo and key labelled' if auto_labeling else ''}."
    )
    return pieces


# ------------------------------------------------------------------------------------------ unpacking


def _unpack(source: Path, dest: Path, limits: DatasetLimits, canceled: threading.Event) -> list[Path]:
    """The audio files of `source` (an archive, unpacked into `dest`, or itself)."""
    if zipfile.is_zipfile(source):
        _unzip(source, dest, limits, canceled)
    elif _is_tar(source):
        _untar(source, dest, limits, canceled)
    elif _probe_is_audio(source):
        return [source]
    else:
        raise UserError("`dataset_path` is neither an archive (zip, tar, tar.gz) nor an audio file ffmpeg can decode.")
    found = sorted(p for p in dest.rglob("*") if p.is_file() and _is_audio_member(p, dest))
    return [p for p in found if p.suffix.lower() in AUDIO_EXTENSIONS or _probe_is_audio(p)]


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


def _copy(src, dest: Path, budget: _Budget, canceled: threading.Event) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as out:
        while chunk := src.read(1 << 20):
            budget.take(len(chunk))  # counted as written: a member's declared size is not trusted
            out.write(chunk)
            if canceled.is_set():
                raise Cancelled()


def _unzip(source: Path, dest: Path, limits: DatasetLimits, canceled: threading.Event) -> None:
    with zipfile.ZipFile(source) as z:
        members = z.infolist()
        _count(len(members))
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
                _copy(src, dest / name, budget, canceled)


def _untar(source: Path, dest: Path, limits: DatasetLimits, canceled: threading.Event) -> None:
    with tarfile.open(source) as tar:
        budget, declared, count = _Budget(limits), 0, 0
        for member in tar:  # streamed: a tar's index is its members, read one by one
            count += 1
            _count(count)
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
                _copy(src, dest / name, budget, canceled)


def _count(n: int) -> None:
    if n > MAX_FILES:
        raise UserError(f"`dataset_path` holds more than {MAX_FILES} files; send at most that many.")


# ------------------------------------------------------------------------------------------ audio


def _probe(path: Path) -> float:
    from .. import inputs

    try:
        return inputs.probe(path).seconds
    except UserError:
        raise UserError(f"{path.name} in `dataset_path` is not audio ffmpeg can decode.") from None


def _probe_is_audio(path: Path) -> bool:
    try:
        return _probe(path) > 0
    except UserError:
        return False


def _decode(path: Path, channels: int) -> np.ndarray:
    """[C, T] float32 at 32 kHz."""
    from .. import inputs

    cmd = [
        "ffmpeg",
        "-v",
        "error",
        "-nostdin",
        *inputs.PLAIN_AUDIO_ONLY,
        "-i",
        str(path),
        "-f",
        "f32le",
        "-ac",
        str(channels),
        "-ar",
        str(SAMPLE_RATE),
        "-",
    ]
    done = subprocess.run(cmd, capture_output=True, timeout=3600, check=False)
    if done.returncode != 0:
        raise UserError(
            f"{path.name} in `dataset_path` could not be decoded: {done.stderr.decode(errors='replace').strip()[:300]}"
        )
    return np.frombuffer(done.stdout, dtype="<f4").reshape(-1, channels).T.copy()


def _write_wav(path: Path, wav: np.ndarray) -> None:
    import soundfile

    soundfile.write(str(path), wav.T, SAMPLE_RATE, subtype="FLOAT")


def _seconds(path: Path) -> float:
    import soundfile

    return soundfile.info(str(path)).duration


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds:.0f} s"


def _description(audio: Path, one_same: str | None) -> str:
    if one_same is not None:
        return one_same
    text = audio.with_suffix(".txt")
    if not text.is_file():
        return ""
    try:
        return text.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise UserError(f"The description {text.name} is not UTF-8 text; save it as UTF-8.") from None


# ------------------------------------------------------------------------------------------ labels


KEYS = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
# Krumhansl-Kessler key profiles: how strongly each pitch class belongs to a major or minor key.
MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def estimate_key(wav: np.ndarray) -> str:
    """The key whose profile correlates best with the piece's mean chroma, e.g. "A minor"."""
    import librosa

    chroma = librosa.feature.chroma_cqt(y=wav.mean(axis=0), sr=SAMPLE_RATE).mean(axis=1)
    best, name = -np.inf, "C major"
    for tonic in range(12):
        for profile, mode in ((MAJOR, "major"), (MINOR, "minor")):
            score = np.corrcoef(chroma, np.roll(profile, tonic))[0, 1]
            if score > best:
                best, name = score, f"{KEYS[tonic]} {mode}"
    return name


def estimate_bpm(wav: np.ndarray) -> float:
    import librosa

    tempo, _ = librosa.beat.beat_track(y=wav.mean(axis=0), sr=SAMPLE_RATE)
    return float(np.atleast_1d(tempo)[0])


def describe_music(wav: np.ndarray) -> str:
    """Tempo and key, as MusicGen's training descriptions put them ("120 bpm, A minor"); empty for silence."""
    if float(np.abs(wav).max(initial=0.0)) < 1e-4:
        return ""
    bpm = estimate_bpm(wav)
    return ", ".join(part for part in (f"{bpm:.0f} bpm" if bpm > 0 else "", estimate_key(wav)) if part)


# ------------------------------------------------------------------------------------------ vocals


def _htdemucs_separator(channels: int) -> Callable[[np.ndarray], np.ndarray]:
    """htdemucs from the weights folder (the one melody models use), on the CPU: drums + bass + other."""
    import torch
    from demucs.apply import apply_model
    from demucs.audio import convert_audio
    from demucs.pretrained import get_model

    model = get_model("htdemucs")
    model.eval()
    keep = [i for i, name in enumerate(model.sources) if name != "vocals"]

    def separate(wav: np.ndarray) -> np.ndarray:
        audio = convert_audio(torch.from_numpy(wav)[None], SAMPLE_RATE, model.samplerate, model.audio_channels)
        with torch.no_grad():
            stems = apply_model(model, audio, shifts=0, split=True, overlap=0.25, progress=False)  # [1, S, C, T]
        kept = stems[0, keep].sum(dim=0)[None]
        back = convert_audio(kept, model.samplerate, SAMPLE_RATE, channels)[0]
        return back.numpy().astype("float32")

    return separate
