"""A stand-in for the fast decoder's CUDA graphs, so that their path through `SlotBatch` runs on CPU.

`RecordingCapture` is a `musicgen_local.engine.fast.batch.Capture`: it records every bucket captured
and every bucket replayed, in order, and "replays" by running the step function eagerly, at the
bucket's shape and in the masked form a graph would hold, so tokens are still produced. Capturing runs
the step as many times as the CUDA capture's warm-up does, so the claim that those runs write nothing
that matters (they also happen while slots are live, after the caches grew) is tested too.

    capture = RecordingCapture()
    batch = SlotBatch(lm, slots, max_frames, mode="graph", capture=capture)
    batch.warm_up(); ...
    capture.captured  # [(rows, length), (rows, length, "adapters"), ...]
"""

from __future__ import annotations

from collections.abc import Callable


class RecordingCapture:
    def __init__(self, warm_up_runs: int = 2) -> None:
        self.warm_up_runs = warm_up_runs
        # (rows, cache length) of each capture, in order; (rows, cache length, "adapters") for the step with
        # the adapters' products
        self.captured: list[tuple] = []
        self.replayed: list[tuple] = []  # and of each replay

    def capture(self, rows: int, length: int, step: Callable[[], None], adapters: bool = False) -> _Replay:
        for _ in range(self.warm_up_runs):
            step()
        bucket = (rows, length, "adapters") if adapters else (rows, length)
        self.captured.append(bucket)
        return _Replay(self, bucket, step)


class _Replay:
    def __init__(self, owner: RecordingCapture, bucket: tuple, step: Callable[[], None]) -> None:
        self.owner, self.bucket, self.step = owner, bucket, step

    def replay(self) -> None:
        self.owner.replayed.append(self.bucket)
        self.step()
