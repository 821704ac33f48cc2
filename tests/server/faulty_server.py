"""`musicgen-local serve` on the real engine and the tiny checkpoints, whose device fails for good after
FAULT_AFTER decode steps (0: never), as a poisoned CUDA context does: every later step raises.

Usage: python faulty_server.py WEIGHTS_DIR DATA_DIR PORT FAULT_AFTER
Exits with serve()'s status.
"""

import logging
import sys
from pathlib import Path

from musicgen_local.engine.fast.model import StaticLM
from musicgen_local.engine.local import LocalEngine
from musicgen_local.server import serve
from musicgen_local.settings import Settings

ILLEGAL_ADDRESS = "CUDA error: an illegal memory access was encountered"


def fail_after(steps: int) -> None:
    original, calls = StaticLM.step, [0]

    def step(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] > steps:
            raise RuntimeError(ILLEGAL_ADDRESS)
        return original(self, *args, **kwargs)

    StaticLM.step = step


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    weights, data, port, fault_after = sys.argv[1:5]
    settings = Settings(
        weights_dir=Path(weights), data_dir=Path(data), devices="cpu", max_batch=1, warmup="large", shutdown_grace=30
    )
    engine = LocalEngine(settings)
    engine.wait_ready()  # the self-check's steps are not counted
    if int(fault_after):
        fail_after(int(fault_after))
    sys.exit(serve(settings, "127.0.0.1", int(port), engine=engine))
