"""A real `musicgen-local serve` process on the fake engine, for tests that kill or stop the server.

Usage: python fake_server.py DATA_DIR PORT SHUTDOWN_GRACE_S STEP_DELAY_S
"""

import logging
import sys
from pathlib import Path

from musicgen_local.server import serve
from musicgen_local.settings import Settings
from musicgen_local.testing.fake_engine import FakeEngine

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    data_dir, port, grace, delay = sys.argv[1:5]
    settings = Settings(data_dir=Path(data_dir), shutdown_grace=float(grace))
    serve(settings, "127.0.0.1", int(port), engine=FakeEngine(step_delay_s=float(delay)))
