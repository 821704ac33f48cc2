"""`input_audio` into a waveform, within limits, in the prepare pool (never on the device loop).

Fetch it (an http(s) URL, a data: URI, or a local file the front door vouches for) with a total
deadline, a byte cap, redirects checked like the first URL, and cancellation that interrupts even a
server that sends nothing; read its format, length, channels and rate (ffprobe, only the demuxers of
plain audio files: a playlist would make ffprobe open other files on this server) before decoding;
refuse a span that would decode to more samples than allowed; decode only the span the request uses;
convert it to the model's rate and channels.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import mimetypes
import subprocess
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from .errors import Cancelled, UserError
from .netpolicy import pin
from .registry import ENCODE_DECODE

if TYPE_CHECKING:
    from .engine.api import Request

SAMPLE_RATE = 32000
MELODY_MARGIN_S = 30  # a melody is never read past max(duration, 30 s) + this: no window reaches it
# ffmpeg's demuxers for audio files (wav, mp3, flac, ogg/opus, aac/m4a/mp4, aiff, webm/mkv, wma, caf): not hls,
# concat or other formats that reference further files or URLs.
AUDIO_DEMUXERS = ("wav", "w64", "mp3", "flac", "ogg", "aac", "mov", "aiff", "matroska", "asf", "caf")
# ffmpeg/ffprobe options that open a local file only as one of those, and nothing it names
PLAIN_AUDIO_ONLY = ("-format_whitelist", ",".join(AUDIO_DEMUXERS), "-protocol_whitelist", "file")


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 60.0  # for the whole download: connection, redirects and body
    max_bytes: int = 100 * 1024 * 1024
    max_duration_s: int = 300  # longest encode-decode input, after the crop
    max_redirects: int = 5
    # decoded samples (channels x rate x seconds) of one input's span: 2 x 48 kHz x 330 s is 31.7 M (127 MB as
    # float32), and the default admits twice that; an 8-channel 192 kHz file of 300 s (461 M) is refused
    max_samples: int = 64_000_000
    # raises UserError for refused addresses; returns how to reach the checked address (netpolicy.Pinned), or None
    check_url: Callable[[str], Any] = field(default=lambda url: None)
    name: str = "input_audio"  # the input being fetched, as messages name it
    size_setting: str = "MUSICGEN_MAX_INPUT_BYTES"
    time_setting: str = "MUSICGEN_INPUT_TIMEOUT"


@dataclass
class Clip:
    wav: object  # torch.Tensor [C, T] float32 at SAMPLE_RATE
    notes: list[str]  # lines for the prediction's logs


def read_clip(request: Request, path: Path, channels: int, limits: Limits) -> Clip:
    """The cropped input of `request`, fetched to `path`, at 32 kHz with `channels` channels (0: the input's
    own)."""
    from audiocraft.data.audio import audio_read
    from audiocraft.data.audio_utils import convert_audio

    info = probe(path)
    length_s = info.seconds
    start, notes = request.continuation_start, []
    end = length_s if request.continuation_end is None else min(request.continuation_end, length_s)
    if end - start <= 0:
        raise UserError(
            f"`input_audio` is empty after cropping to continuation_start={start}, "
            f"continuation_end={request.continuation_end} (the clip is {length_s:.2f} s long)."
        )
    if request.model_version == ENCODE_DECODE and end - start > limits.max_duration_s:
        raise UserError(
            f"`input_audio` is {end - start:.1f} s long after cropping; `encode-decode` takes at most "
            f"{limits.max_duration_s} s (MUSICGEN_MAX_DURATION). Crop it with continuation_start and "
            "continuation_end."
        )
    if request.continuation and end - start >= request.duration:
        raise UserError(
            f"The continuation prompt ({end - start:.1f} s after cropping) must be shorter than "
            f"`duration` ({request.duration} s): the output includes the prompt."
        )
    useful = max(request.duration, 30) + MELODY_MARGIN_S
    if not request.continuation and request.model_version != ENCODE_DECODE and end - start > useful:
        notes.append(
            f"The melody is {end - start:.0f} s long after cropping; its first {useful} s condition "
            "this request (no window reaches further)."
        )
        end = start + useful
    samples = info.channels * info.sample_rate * (end - start)
    if samples > limits.max_samples:
        raise UserError(
            f"`input_audio` would decode to {samples:,.0f} samples ({info.channels} channels x "
            f"{info.sample_rate} Hz x {end - start:.1f} s after cropping); at most "
            f"{limits.max_samples:,} are read (MUSICGEN_MAX_INPUT_SAMPLES). Send fewer channels, a lower "
            "sample rate or a shorter clip."
        )
    try:
        wav, sr = audio_read(path, seek_time=start, duration=end - start)
    except Exception as exc:  # noqa: BLE001 -- decoders raise many types; all mean "not audio we can read"
        raise UserError(f"Could not decode `input_audio`: {exc}. Send a wav, mp3, flac or ogg file.") from None
    if wav.numel() == 0:
        raise UserError("`input_audio` contains no audio samples.")
    return Clip(convert_audio(wav, sr, SAMPLE_RATE, channels or wav.shape[0]), notes)


@dataclass(frozen=True)
class Probed:
    seconds: float
    channels: int
    sample_rate: int


def probe(path: Path) -> Probed:
    """The audio's length, channels and rate, read from its container without decoding it."""
    done = subprocess.run(probe_command(path), capture_output=True, text=True, timeout=30, check=False)
    return probed(done.stdout if done.returncode == 0 else "")


def probe_command(path: Path) -> list[str]:
    """ffprobe's command for `probe` (a dataset's files run it under their own step's cancel and timeout)."""
    return [
        "ffprobe",
        "-v",
        "error",
        *PLAIN_AUDIO_ONLY,
        "-select_streams",
        "a:0",
        "-show_entries",
        "format=duration:stream=duration,channels,sample_rate",
        "-of",
        "json",
        str(path),
    ]


def probed(output: str) -> Probed:
    """What `probe_command` printed, read; UserError when it names no audio stream with a length."""
    info = json.loads(output or "{}")
    streams = info.get("streams") or [{}]
    durations = [streams[0].get("duration"), info.get("format", {}).get("duration")]
    for value in durations:
        try:
            return Probed(float(value), int(streams[0].get("channels") or 0), int(streams[0].get("sample_rate") or 0))
        except (TypeError, ValueError):
            continue
    raise UserError(
        "Could not decode `input_audio`: it holds no audio stream ffmpeg can read. Send a wav, mp3, flac or ogg file."
    )


# ------------------------------------------------------------------------------------------ fetching


def fetch(ref: str, work_dir: Path, limits: Limits, canceled: threading.Event) -> Path:
    """A local file holding `ref`'s bytes."""
    work_dir.mkdir(parents=True, exist_ok=True)
    if ref.startswith("data:"):
        return _decode_data_uri(ref, work_dir, limits)
    if ref.startswith(("http://", "https://")):
        path = work_dir / f"input{Path(urllib.parse.urlparse(ref).path).suffix or '.bin'}"
        asyncio.run(_download_or_cancel(ref, path, limits, canceled))
        return path
    path = Path(ref.removeprefix("file://")).expanduser()
    if not path.is_file():
        raise UserError(f"`{limits.name}` file not found: {ref}")
    return path


def _decode_data_uri(ref: str, work_dir: Path, limits: Limits) -> Path:
    mime, data = decode_data_uri(ref, limits.name, limits.max_bytes, limits.size_setting)
    path = work_dir / f"input{mimetypes.guess_extension(mime) or '.bin'}"
    path.write_bytes(data)
    return path


def decode_data_uri(ref: str, name: str, max_bytes: int, size_setting: str) -> tuple[str, bytes]:
    """A `data:` URI's media type and bytes; UserError (naming the input `name`) when it is malformed or larger than
    `max_bytes` (the setting `size_setting`)."""
    header, sep, payload = ref.partition(",")
    if not sep:
        raise UserError(f"`{name}` is a malformed data URI (no comma before the data).")
    if len(payload) * 3 // 4 > max_bytes:
        raise UserError(f"`{name}` is larger than {max_bytes} bytes ({size_setting}).")
    mime = header[5:].split(";")[0] or "application/octet-stream"
    try:
        data = (
            base64.b64decode(payload, validate=False) if ";base64" in header else urllib.parse.unquote_to_bytes(payload)
        )
    except (binascii.Error, ValueError) as exc:
        raise UserError(f"`{name}` data URI is not valid base64: {exc}") from None
    return mime, data


async def _download_or_cancel(url: str, path: Path, limits: Limits, canceled: threading.Event) -> None:
    download = asyncio.ensure_future(_download(url, path, limits))

    async def watch() -> None:
        while not canceled.is_set():
            await asyncio.sleep(0.05)
        download.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        async with asyncio.timeout(limits.timeout_s):
            await download
    except asyncio.CancelledError:
        raise Cancelled() from None
    except TimeoutError:
        raise UserError(
            f"Could not download `{limits.name}` from {url}: it took longer than {limits.timeout_s:.0f} s "
            f"({limits.time_setting})."
        ) from None
    finally:
        watcher.cancel()


async def _download(url: str, path: Path, limits: Limits) -> None:
    timeout = httpx.Timeout(limits.timeout_s)
    async with httpx.AsyncClient(follow_redirects=False, timeout=timeout) as client:
        for _ in range(limits.max_redirects + 1):
            pinned = limits.check_url(url)  # then connect to the address checked, not to a fresh DNS answer
            target, headers, extensions = (
                (url, {}, {}) if pinned is None else (pinned.url, pinned.headers, pinned.extensions)
            )
            try:
                async with client.stream("GET", target, headers=headers, extensions=extensions) as response:
                    if response.is_redirect:  # followed by hand, so that every hop is checked
                        url = str(httpx.URL(url).join(response.headers["location"]))
                        continue
                    response.raise_for_status()
                    await _save(response, path, limits, url)
                    return
            except httpx.HTTPError as exc:
                raise UserError(f"Could not download `{limits.name}` from {url}: {exc}") from None
        raise UserError(f"Could not download `{limits.name}`: more than {limits.max_redirects} redirects.")


async def _save(response: httpx.Response, path: Path, limits: Limits, url: str) -> None:
    max_bytes = limits.max_bytes
    too_large = UserError(f"`{limits.name}` at {url} is larger than {max_bytes} bytes ({limits.size_setting}).")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    size = 0
    with path.open("wb") as f:
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise too_large
            f.write(chunk)


def input_url_check(block_private: bool, name: str = "input_audio"):
    """What checks every URL an input download goes to, redirects included: never link-local or cloud metadata."""
    return partial(_check_input_url, block_private=block_private, name=name)


def _check_input_url(url: str, block_private: bool, name: str):
    reason, pinned = pin(url, block_private)
    if pinned is None:
        raise UserError(f"`{name}` cannot be downloaded: Refused {url!r}: {reason}.")
    return pinned
