"""Time-stretch with Rubber Band's command-line tool, sample positions pinned by a key-frame map.

Rubber Band (GPL) runs as a separate program, Debian's `rubberband-cli` (`scripts/ensure-rubberband.sh`,
run by `make install`; cog.yaml installs it in the image); nothing of it is linked into this package.
Its R3 engine ("--fine") is used: on clicks it keeps each attack within about 1.5 ms of where the map
puts it, where the R2 engine (the CLI's default, and the original looper's through pyrubberband)
shifts them by about 6 ms. The map pins each tracked downbeat to its place on the requested tempo's
grid, so a generation whose tempo drifts comes out on the grid, not just right on average.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import EngineError

RUBBERBAND = "rubberband"


class RubberBandMissing(EngineError):
    def __init__(self) -> None:
        super().__init__(
            "The looper needs Rubber Band's command-line tool (`rubberband`), which is not installed. "
            "Run `make install`, or install Debian's package: `sudo apt-get install rubberband-cli`."
        )


def available() -> bool:
    return shutil.which(RUBBERBAND) is not None


def stretch(audio: np.ndarray, sr: int, keys: Sequence[tuple[int, int]], out_len: int) -> np.ndarray:
    """`audio` ([T] or [C, T]) stretched to exactly `out_len` samples, source sample `s` of each
    (s, d) in `keys` landing on output sample `d`. Returns the same layout as given, float32."""
    import soundfile

    if not available():
        raise RubberBandMissing()
    audio = np.asarray(audio, dtype=np.float32)
    frames = audio if audio.ndim == 1 else audio.T  # soundfile wants [T, C]
    with tempfile.TemporaryDirectory(prefix="looper-stretch-") as tmp:
        src, dst, keymap = Path(tmp, "in.wav"), Path(tmp, "out.wav"), Path(tmp, "keys.txt")
        soundfile.write(src, frames, sr, subtype="FLOAT")
        keymap.write_text("".join(f"{s} {d}\n" for s, d in keys))
        ratio = out_len / len(frames)
        # Float in and out, peak-normalised afterwards: clipping cannot happen, so no restart at lower gain.
        options = ["--quiet", "--fine", "--ignore-clipping", "--timemap", str(keymap), "--time", f"{float(ratio):.12g}"]
        done = subprocess.run([RUBBERBAND, *options, str(src), str(dst)], check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise EngineError(f"rubberband failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
        out, _ = soundfile.read(dst, dtype="float32", always_2d=True)
    out = _exact(out, out_len)  # [T, C]
    return out[:, 0] if audio.ndim == 1 else np.ascontiguousarray(out.T)


def _exact(frames: np.ndarray, length: int) -> np.ndarray:
    """Rubber Band's output length is its rounding of in x ratio; callers keep context after what they cut,
    so a sample or two more or less at the very end is trimmed or zero-padded there."""
    if len(frames) >= length:
        return frames[:length]
    return np.concatenate([frames, np.zeros((length - len(frames), frames.shape[1]), frames.dtype)])
