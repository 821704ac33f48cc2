"""The CLI's `--stream` output: a WAV file that grows as segments arrive, then becomes the final file.

While the request generates, the file holds the segments so far as 16-bit PCM, before normalisation
(and before MultiBand Diffusion, when asked for: the segments are EnCodec's), clipped to full scale.
After every segment its header is fixed up to say how much audio it holds, so a player or a reader
opening it at any moment sees a valid WAV of the audio so far. At the end the final output (the
normalised file, exactly as without `--stream`) replaces it in one rename. Torch-free.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

HEADER_BYTES = 44  # RIFF, fmt (PCM 16-bit) and data chunk headers


class GrowingWav:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.frames = 0
        self._file = None
        self._channels = 0

    def append(self, segment_wav: bytes) -> None:
        """Add one segment, as the engine sends it (a complete WAV of that segment, 32-bit float)."""
        import numpy as np
        import soundfile

        samples, sr = soundfile.read(io.BytesIO(segment_wav), dtype="float32", always_2d=True)  # [T, C]
        if self._file is None:
            self._channels = samples.shape[1]
            self._file = open(self.path, "wb")  # noqa: SIM115 - held open while the request generates
            self._file.write(_header(sr, self._channels, 0))
        pcm = (np.clip(samples, -1, 1) * 32767).round().astype("<i2")
        self._file.seek(0, os.SEEK_END)
        self._file.write(pcm.tobytes())
        self.frames += pcm.shape[0]
        data_bytes = self.frames * self._channels * 2
        self._file.seek(4)
        self._file.write(struct.pack("<I", 36 + data_bytes))
        self._file.seek(40)
        self._file.write(struct.pack("<I", data_bytes))
        self._file.flush()

    def finish(self, final: bytes, out: Path) -> None:
        """Put the final file at `out` in one rename (over the growing file when it is the same path)."""
        self._close()
        tmp = out.with_name(f".{out.name}.part")
        tmp.write_bytes(final)
        os.replace(tmp, out)
        if self.path != out:
            self.path.unlink(missing_ok=True)

    def discard(self) -> None:
        """The request failed: no half file is left behind."""
        self._close()
        self.path.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _header(sample_rate: int, channels: int, data_bytes: int) -> bytes:
    fmt = struct.pack("<HHIIHH", 1, channels, sample_rate, sample_rate * channels * 2, channels * 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", data_bytes)
    )
