"""A real `musicgen-local serve` process on the fake engine, for tests that kill or stop the server.

Usage: python fake_server.py DATA_DIR PORT SHUTDOWN_GRACE_S STEP_DELAY_S
"""

import os
import signal
import sys
import threading
from pathlib import Path

from musicgen_local import logs
from musicgen_local.engine.api import Failed
from musicgen_local.engine.run import EventQueue
from musicgen_local.server import serve
from musicgen_local.settings import Settings
from musicgen_local.testing.fake_engine import FakeEngine

# A request that kills the process while it is still `starting`, as an input that exhausts memory in the prepare
# pool does: a second later, so that the create's answer and the health check get out first.
DIE_WHILE_STARTING = "die while starting"
# A request whose device fails for good (the engine's `lost` event, as a CUDA fault sets it): the server drains
# what it can answer, its webhooks included, and exits for a restart.
LOSE_THE_DEVICE = "lose the device"


class EngineAnInputKills(FakeEngine):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.lost = threading.Event()

    def submit(self, request, *, stream=False):
        if request.prompt == LOSE_THE_DEVICE:  # as the device loop ends a request it had not started
            self.lost.set()
            run = EventQueue()
            run.emit(Failed("The GPU failed for good.", kind="device"))
            return run
        if request.prompt != DIE_WHILE_STARTING:
            return super().submit(request, stream=stream)
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGKILL)).start()
        return EventQueue()  # never Started: the process dies first

    def health(self) -> dict:
        if self.lost.is_set():
            return {"status": "UNHEALTHY", "error": "The GPU failed for good."}
        return super().health()


if __name__ == "__main__":
    data_dir, port, grace, delay = sys.argv[1:5]
    settings = Settings.from_env().with_(data_dir=Path(data_dir), shutdown_grace=float(grace))  # MUSICGEN_* too
    logs.configure(settings.log_format)
    sys.exit(serve(settings, "127.0.0.1", int(port), engine=EngineAnInputKills(step_delay_s=float(delay))))
