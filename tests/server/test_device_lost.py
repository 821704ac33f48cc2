"""A device that fails for good, as a user's client sees it: the prediction that was generating fails with
a message that says what happened (and its `completed` webhook says so); the server stops by itself with
status 3 so that its supervisor restarts it; the prediction that was queued behind it was not lost and
runs after the restart."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from server_helpers import V1, Receiver

from musicgen_local.server import EXIT_DEVICE_LOST
from musicgen_local.testing.live import free_port

HERE = Path(__file__).resolve().parent


class Server:
    def __init__(self, weights: Path, data: Path, fault_after: int) -> None:
        self.url = f"http://127.0.0.1:{(port := free_port())}"
        self.log = (data.parent / f"server-{port}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "faulty_server.py"), str(weights), str(data), str(port), str(fault_after)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/health-check", timeout=1).json()["status"] == "READY":
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, self.output()
            time.sleep(0.2)

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def create(self, prompt: str, duration: int, webhook: str) -> str:
        body = {
            "version": V1,
            "input": {"model_version": "large", "prompt": prompt, "duration": duration},
            "webhook": webhook,
            "webhook_events_filter": ["completed"],
        }
        return httpx.post(f"{self.url}/v1/predictions", json=body, timeout=10).json()["id"]

    def get(self, pred_id: str) -> dict:
        return httpx.get(f"{self.url}/v1/predictions/{pred_id}", timeout=10).json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.mark.slow
def test_a_lost_device_fails_what_ran_exits_for_a_restart_and_loses_nothing_queued(tiny_weights, tmp_path):
    hook = Receiver()
    first = Server(tiny_weights, tmp_path / "data", fault_after=40)
    try:
        running = first.create("running", 2, hook.url)  # 103 steps: the device fails at the 41st
        queued = first.create("queued", 1, hook.url)  # one slot: it waits behind the first
        assert first.proc.wait(timeout=120) == EXIT_DEVICE_LOST, first.output()
        assert "A device failed for good" in first.output()
    finally:
        first.stop()

    hook.wait_for(lambda events: any(e["id"] == running for e in events))
    failed = next(e for e in hook.events() if e["id"] == running)
    assert failed["status"] == "failed"
    assert "failed with an unrecoverable error" in failed["error"] and "illegal memory access" in failed["error"]

    again = Server(tiny_weights, tmp_path / "data", fault_after=0)
    try:
        assert again.get(running)["status"] == "failed"
        deadline = time.monotonic() + 60
        while (body := again.get(queued))["status"] != "succeeded":
            assert body["status"] in ("starting", "processing") and time.monotonic() < deadline, body
            time.sleep(0.1)
        assert body["output"]
        hook.wait_for(lambda events: any(e["id"] == queued and e["status"] == "succeeded" for e in events))
    finally:
        again.stop()
        hook.server.shutdown()
