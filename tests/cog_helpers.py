"""Cog's own HTTP server (coglet) started from this tree with `musicgen-local cog-serve`, on tiny weights, for the
tests that drive predict.py, predict_looper.py and train.py through it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from musicgen_local.testing.live import free_port

ROOT = Path(__file__).resolve().parents[1]


class CogServer:
    """Started and READY on construction (else the test fails with the server's log); `stop()` ends it."""

    def __init__(self, tiny_weights: Path, log: Path, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("w")
        environ = dict(os.environ, MUSICGEN_WEIGHTS=str(tiny_weights), MUSICGEN_DEVICES="cpu", **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "musicgen_local.cli", "cog-serve", "--port", str(self.port), *args],
            cwd=ROOT,
            env=environ,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health-check", timeout=2).json()["status"] == "READY":
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, log.read_text()
            time.sleep(0.5)
        self.stop()
        pytest.fail("cog server not ready: " + log.read_text())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()
