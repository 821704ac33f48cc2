"""Audio in and out: fetch and decode input_audio, crop it, normalise and encode the output.

Normalisation uses audiocraft's own `normalize_audio` with the parameters Replicate's predictor
gets from `audio_write` (peak/clip headroom 1 dB, rms 18 dB, loudness -14 LUFS), so output levels
match meta/musicgen. Encoding pipes float PCM through the ffmpeg CLI as audio_write does.
"""

from __future__ import annotations

import base64
import binascii
import math
import mimetypes
import subprocess
import urllib.parse
from pathlib import Path

import httpx

from .errors import UserError

SAMPLE_RATE = 32000
# ITU-R BS.1770 measures loudness over 400 ms blocks; torchaudio fails on anything shorter.
MIN_LOUDNESS_SECONDS = 0.4
MP3_KBPS = 320
DOWNLOAD_TIMEOUT_S = 60.0


# ----------------------------------------------------------------------------------------- input


def fetch_input(ref: str, work_dir: Path) -> Path:
    """A local file for `input_audio`: a path as is, an http(s) URL downloaded, a data: URI decoded."""
    if ref.startswith("data:"):
        return _decode_data_uri(ref, work_dir)
    if ref.startswith(("http://", "https://")):
        return _download(ref, work_dir)
    path = Path(ref.removeprefix("file://")).expanduser()
    if not path.is_file():
        raise UserError(f"`input_audio` file not found: {ref}")
    return path


def _decode_data_uri(ref: str, work_dir: Path) -> Path:
    header, sep, payload = ref.partition(",")
    if not sep:
        raise UserError("`input_audio` is a malformed data URI (no comma before the data).")
    mime = header[5:].split(";")[0] or "application/octet-stream"
    try:
        data = base64.b64decode(payload, validate=False) if ";base64" in header else urllib.parse.unquote_to_bytes(
            payload)
    except (binascii.Error, ValueError) as exc:
        raise UserError(f"`input_audio` data URI is not valid base64: {exc}") from None
    path = work_dir / f"input{mimetypes.guess_extension(mime) or '.bin'}"
    path.write_bytes(data)
    return path


def _download(url: str, work_dir: Path) -> Path:
    suffix = Path(urllib.parse.urlparse(url).path).suffix or ".bin"
    path = work_dir / f"input{suffix}"
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=DOWNLOAD_TIMEOUT_S) as response:
            response.raise_for_status()
            with path.open("wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
    except httpx.HTTPError as exc:
        raise UserError(f"Could not download `input_audio` from {url}: {exc}") from None
    return path


def read(path: Path):
    """Decode any audio file ffmpeg/libsndfile can read; returns (wav [C, T] float32, sample rate)."""
    from audiocraft.data.audio import audio_read

    try:
        wav, sr = audio_read(path)
    except Exception as exc:  # noqa: BLE001 -- decoders raise many types; all mean "not audio we can read"
        raise UserError(
            f"Could not decode `input_audio` ({path.name}): {exc}. Send a wav, mp3, flac or ogg file.") from None
    if wav.numel() == 0:
        raise UserError("`input_audio` contains no audio samples.")
    return wav, sr


def crop(wav, sr: int, start: int, end: int | None):
    """Replicate's crop: [start, end) seconds, end None meaning the end of the clip; `wav` is [C, T]."""
    length_s = wav.shape[-1] / sr
    end_s = length_s if end is None else end
    cropped = wav[..., int(sr * start):int(sr * end_s)]
    if cropped.shape[-1] == 0:
        raise UserError(f"`input_audio` is empty after cropping to continuation_start={start}, "
                        f"continuation_end={end} (the clip is {length_s:.2f} s long).")
    return cropped


# ----------------------------------------------------------------------------------------- output


def normalize(wav, sr: int, strategy: str):
    """audiocraft's normalisation with audio_write's defaults; `wav` is [C, T]."""
    from audiocraft.data.audio_utils import normalize_audio

    if strategy == "loudness" and wav.shape[-1] < MIN_LOUDNESS_SECONDS * sr:
        return _normalize_short_loudness(wav, sr)
    return normalize_audio(wav, normalize=True, strategy=strategy, peak_clip_headroom_db=1, rms_headroom_db=18,
                           loudness_headroom_db=14, loudness_compressor=False, log_clipping=False,
                           sample_rate=sr)


def _normalize_short_loudness(wav, sr: int):
    """Loudness of a clip too short to measure: measure it repeated end to end (same loudness,
    long enough for the 400 ms blocks), then apply that gain to the clip itself."""
    from audiocraft.data.audio_utils import normalize_loudness

    repeats = math.ceil(MIN_LOUDNESS_SECONDS * sr / wav.shape[-1]) + 1
    tiled = wav.repeat(1, repeats)
    energy = tiled.norm()
    if energy == 0:
        return wav
    gain = normalize_loudness(tiled, sr, loudness_headroom_db=14).norm() / energy
    return (wav * gain).clamp(-1, 1)


def write(wav, sr: int, path: Path, strategy: str) -> Path:
    """Normalise and encode `wav` [C, T] to `path` (.wav: PCM 16-bit; .mp3: 320 kbps LAME)."""
    wav = normalize(wav.detach().float().cpu(), sr, strategy)
    codec = {".wav": ["-c:a", "pcm_s16le", "-f", "wav"],
             ".mp3": ["-c:a", "libmp3lame", "-b:a", f"{MP3_KBPS}k", "-f", "mp3"]}[path.suffix]
    channels = wav.shape[0]
    cmd = ["ffmpeg", "-loglevel", "error", "-y", "-f", "f32le", "-ar", str(sr), "-ac", str(channels), "-i", "-",
           *codec, str(path)]
    pcm = wav.t().contiguous().numpy().tobytes()  # interleaved [T, C]
    subprocess.run(cmd, input=pcm, check=True, capture_output=True)
    return path
