"""The fast token decoder: MusicGen LMs over preallocated caches, batched continuously, one
fixed-shape step (CUDA graphs on CUDA), each request sampling from its own generator.

`SlotBatch` is what the device loop drives; `decode` runs a set of windows to completion (the
benchmark and the warm-up use it).
"""

from .batch import Lora, SlotBatch, Window, resolve_mode
from .model import unsupported_reason
from .step import SamplingParams

__all__ = ["Lora", "SamplingParams", "SlotBatch", "Window", "decode", "resolve_mode", "unsupported_reason"]


def decode(batch: SlotBatch, windows: list[Window]) -> list:
    """Each window's codes [1, K, frames], decoding them together (as many at once as there are slots)."""
    waiting = list(enumerate(windows))
    running: dict[int, int] = {}  # slot -> index in windows
    out: list = [None] * len(windows)
    while waiting or running:
        while waiting and batch.has_room(waiting[0][1].lora):
            index, window = waiting.pop(0)
            running[batch.admit(window)] = index
        for slot in [s for s in running if batch.done(s)]:
            out[running.pop(slot)] = batch.codes(slot)
            batch.release(slot)
        if running:
            batch.step()
    return out
