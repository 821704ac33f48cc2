"""The steps of preparing a dataset, each one cancellable and under MUSICGEN_DATASET_TIMEOUT.

A step is the download, the unpacking, or one file's probe or decode. Each checks the training's cancel event at
least every tenth of a second, even while a subprocess (ffprobe, ffmpeg) runs, and ends the subprocess when it
stops: a cancel takes effect within a moment at any stage, and no file can hold the training queue longer than
the setting.

A file is decoded as a stream, one piece at a time (`decode_pieces`): what the dataset holds is measured as it
decodes, never read from the file's header, and memory holds one piece whatever the file's length.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from ..errors import Cancelled, UserError

TIMEOUT_SETTING = "MUSICGEN_DATASET_TIMEOUT"
POLL_S = 0.1  # how often a running step looks at the cancel event
STDERR_KEPT = 4096  # the end of a subprocess' error output, for the message


class Step:
    """One step's clock and cancel check. `paused()` stops the clock while the caller works on what the step gave
    (separating vocals from a piece is not ffmpeg's time)."""

    def __init__(self, what: str, canceled: threading.Event, timeout_s: float) -> None:
        self.what, self.canceled, self.timeout_s = what, canceled, timeout_s
        self._spent, self._since = 0.0, time.monotonic()

    def elapsed(self) -> float:
        return self._spent + (time.monotonic() - self._since if self._since is not None else 0.0)

    def check(self) -> None:
        if self.canceled.is_set():
            raise Cancelled()
        if self.elapsed() > self.timeout_s:
            raise UserError(
                f"{self.what[0].upper()}{self.what[1:]} took longer than {self.timeout_s:.0f} s "
                f"({TIMEOUT_SETTING}); send a smaller dataset, or raise the setting."
            )

    @contextmanager
    def paused(self) -> Iterator[None]:
        self._spent, self._since = self.elapsed(), None
        try:
            yield
        finally:
            self._since = time.monotonic()


def run(cmd: list[str], step: Step) -> tuple[int, bytes, bytes]:
    """(return code, stdout, stderr) of `cmd`, killed when the step is canceled or out of time."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while True:
            step.check()
            try:
                out, err = proc.communicate(timeout=POLL_S)  # retried after a timeout without losing output
                return proc.returncode, out, err
            except subprocess.TimeoutExpired:
                continue
    finally:
        _end(proc)


def decode_pieces(cmd: list[str], channels: int, piece_samples: int, step: Step) -> Iterator[np.ndarray]:
    """ffmpeg's `cmd` (raw float32 samples, `channels` interleaved, on stdout) as [C, T] pieces of `piece_samples`
    (the last one shorter). The step's clock is stopped while the caller holds a piece. Raises UserError with
    ffmpeg's message when it fails."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    frame, piece_bytes = 4 * channels, 4 * channels * piece_samples
    pending, errors = bytearray(), b""
    selector = selectors.DefaultSelector()
    try:
        selector.register(proc.stdout, selectors.EVENT_READ)
        selector.register(proc.stderr, selectors.EVENT_READ)
        while selector.get_map():
            step.check()
            for key, _ in selector.select(timeout=POLL_S):
                data = os.read(key.fd, 1 << 20)
                if not data:
                    selector.unregister(key.fileobj)
                elif key.fileobj is proc.stderr:
                    errors = (errors + data)[-STDERR_KEPT:]
                else:
                    pending += data
            while len(pending) >= piece_bytes:
                piece = _samples(pending, piece_bytes, channels)
                del pending[:piece_bytes]
                with step.paused():
                    yield piece
        while proc.poll() is None:  # its output is closed: it is exiting
            step.check()
            time.sleep(0.01)
        if proc.returncode != 0:
            raise UserError(errors.decode(errors="replace").strip()[-300:] or f"ffmpeg exited with {proc.returncode}")
        whole = len(pending) - len(pending) % frame
        if whole:
            yield _samples(pending, whole, channels)
    finally:
        selector.close()
        _end(proc)


def _samples(data: bytearray, size: int, channels: int) -> np.ndarray:
    """[C, T] float32 from the first `size` bytes of `data` (copied once: `data` is reused)."""
    return np.frombuffer(data, dtype="<f4", count=size // 4).reshape(-1, channels).T.copy()


def _end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
