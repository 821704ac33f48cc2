"""Reading back what the engine wrote, as a user's tools would."""

import struct
from pathlib import Path

import numpy as np
import soundfile


def wav_header(path: Path) -> dict:
    """The RIFF/WAVE fmt chunk, parsed from the bytes."""
    data = Path(path).read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", data[:12]
    pos = 12
    while pos < len(data):
        chunk, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if chunk == b"fmt ":
            fmt, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[pos + 8 : pos + 24])
            return {"format": fmt, "channels": channels, "sample_rate": rate, "bits": bits}
        pos += 8 + size
    raise AssertionError("no fmt chunk")


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Samples as [C, T] float, and the sample rate."""
    data, sr = soundfile.read(str(path), dtype="float32", always_2d=True)
    return data.T, sr


def write_tone(path: Path, seconds: float, sr: int = 32000, channels: int = 1, freq: float = 440.0) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    tone = 0.5 * np.sin(2 * np.pi * freq * t)
    soundfile.write(str(path), np.stack([tone] * channels, axis=1), sr, subtype="PCM_16")
    return path


def wav_bytes(data: bytes) -> tuple[np.ndarray, int]:
    """Samples [C, T] and the sample rate of an encoded file held in memory."""
    import io

    samples, sr = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples.T, sr


def generate(engine, stream: bool = False, **inputs):
    """One request through the engine's public interface: its Result, or the error its run ended with."""
    from musicgen_local.engine import Request, result_of

    inputs.setdefault("prompt", "lofi beat")
    return result_of(engine.submit(Request(**inputs), stream=stream))


def events_of(engine, stream: bool = False, **inputs) -> list:
    """Every event of one request, in order."""
    from musicgen_local.engine import Request

    inputs.setdefault("prompt", "lofi beat")
    return list(engine.submit(Request(**inputs), stream=stream))
