"""Audio out: normalise and encode the output file; float WAV bytes for streamed segments.

Normalisation uses audiocraft's own `normalize_audio` with the parameters Replicate's predictor
gets from `audio_write` (peak/clip headroom 1 dB, rms 18 dB, loudness -14 LUFS), so output levels
match meta/musicgen. Encoding pipes float PCM through the ffmpeg CLI as audio_write does. Torch is
imported inside the functions that need it, so torch-free code (the fake engine) can import this.
"""

from __future__ import annotations

import math
import struct
import subprocess
import tempfile
from pathlib import Path

SAMPLE_RATE = 32000
# ITU-R BS.1770 measures loudness over 400 ms blocks; torchaudio fails on anything shorter.
MIN_LOUDNESS_SECONDS = 0.4
MP3_KBPS = 320


# ----------------------------------------------------------------------------------------- output


def normalize(wav, sr: int, strategy: str):
    """audiocraft's normalisation with audio_write's defaults; `wav` is [C, T]."""
    from audiocraft.data.audio_utils import normalize_audio

    if strategy == "loudness" and wav.shape[-1] < MIN_LOUDNESS_SECONDS * sr:
        return _normalize_short_loudness(wav, sr)
    return normalize_audio(
        wav,
        normalize=True,
        strategy=strategy,
        peak_clip_headroom_db=1,
        rms_headroom_db=18,
        loudness_headroom_db=14,
        loudness_compressor=False,
        log_clipping=False,
        sample_rate=sr,
    )


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


def encode(wav, sr: int, fmt: str, strategy: str) -> bytes:
    """Normalise `wav` [C, T] and encode it: "wav" is PCM 16-bit, "mp3" 320 kbps LAME."""
    wav = normalize(wav.detach().float().cpu(), sr, strategy)
    codec = {
        "wav": ["-c:a", "pcm_s16le", "-f", "wav"],
        "mp3": ["-c:a", "libmp3lame", "-b:a", f"{MP3_KBPS}k", "-f", "mp3"],
    }[fmt]
    channels = wav.shape[0]
    pcm = wav.t().contiguous().numpy().tobytes()  # interleaved [T, C]
    with tempfile.TemporaryDirectory() as tmp:  # a file, not a pipe: the wav header is written with its sizes
        path = Path(tmp) / f"out.{fmt}"
        cmd = [
            "ffmpeg",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "f32le",
            "-ar",
            str(sr),
            "-ac",
            str(channels),
            "-i",
            "-",
            *codec,
            str(path),
        ]
        subprocess.run(cmd, input=pcm, check=True, capture_output=True)
        return path.read_bytes()


def float_wav(samples, sr: int) -> bytes:
    """A WAV file (IEEE float 32-bit) of `samples`, a float32 array [T, C]."""
    data = samples.astype("<f4", copy=False).tobytes()
    frames, channels = samples.shape
    fmt = struct.pack("<HHIIHH", 3, channels, sr, sr * channels * 4, channels * 4, 32)
    chunks = [
        b"fmt ",
        struct.pack("<I", len(fmt)),
        fmt,
        b"fact",
        struct.pack("<II", 4, frames),
        b"data",
        struct.pack("<I", len(data)),
        data,
    ]
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body
