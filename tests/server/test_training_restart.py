"""A training on the real engine (tiny weights) in a `musicgen-local serve` process of its own: predictions keep
being served while it trains; kill -9 mid-training, restart, and it resumes from its last checkpoint to the end,
its `completed` webhook saying so; cancel ends it `canceled` within a step."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from server_helpers import V1, Receiver

from musicgen_local.testing.live import free_port
from tests.training_helpers import QUICK_TRAINING, songs_zip

ROOT = Path(__file__).resolve().parents[2]
LONG = {**QUICK_TRAINING, "updates_per_epoch": 60, "lr": 1e-3}  # a checkpoint every 6 updates


class Server:
    def __init__(self, data: Path, weights: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (data.parent / f"server-{self.port}.log").open("w")
        env = dict(
            os.environ,
            MUSICGEN_WEIGHTS=str(weights),
            MUSICGEN_DATA=str(data),
            MUSICGEN_DEVICES="cpu",
            MUSICGEN_WARMUP="none",
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "musicgen_local.cli", "serve", "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.until(lambda: httpx.get(f"{self.url}/health-check", timeout=2).json()["status"] == "READY", 120)

    def until(self, condition, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if found := condition():
                    return found
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, Path(self.log.name).read_text()[-3000:]
            time.sleep(0.1)
        raise AssertionError(Path(self.log.name).read_text()[-3000:])

    def get(self, path: str) -> dict:
        return httpx.get(f"{self.url}{path}", timeout=10).json()

    def post(self, path: str, body: dict | None = None) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, timeout=30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture
def servers(tmp_path, tiny_weights):
    started: list[Server] = []

    def start() -> Server:
        started.append(Server(tmp_path / "data", tiny_weights))
        return started[-1]

    yield start
    for server in started:
        server.kill()


def _train(server: Server, dataset: str, name: str, webhook: str | None = None) -> dict:
    assert server.post("/v1/models", {"owner": "alice", "name": name}).status_code == 201
    body = {"destination": f"alice/{name}", "input": {**LONG, "dataset_path": dataset}}
    if webhook:
        body |= {"webhook": webhook, "webhook_events_filter": ["completed"]}
    created = server.post(f"/v1/models/meta/musicgen/versions/{V1}/trainings", body)
    assert created.status_code == 201, created.text
    return created.json()


def _at_step(server: Server, training_id: str, step: int):
    def reached():
        logs = server.get(f"/v1/trainings/{training_id}")["logs"]
        return any(line.startswith(f"step {step}/") for line in logs.splitlines())

    return reached


@pytest.mark.slow
def test_kill_9_mid_training_resumes_from_the_checkpoint_and_predictions_flow(servers, tmp_path):
    dataset = "data:application/zip;base64," + base64.b64encode(songs_zip(tmp_path / "s.zip").read_bytes()).decode()
    hook = Receiver()
    try:
        server = servers()
        training = _train(server, dataset, "resumed", hook.url)
        server.until(_at_step(server, training["id"], 3), 120)
        pred = server.post(
            "/v1/predictions", {"version": V1, "input": {"prompt": "x", "duration": 1, "model_version": "large"}}
        ).json()
        done = server.until(
            lambda: (p := server.get(f"/v1/predictions/{pred['id']}"))["status"] in ("succeeded", "failed") and p, 120
        )
        assert done["status"] == "succeeded"
        assert server.get(f"/v1/trainings/{training['id']}")["status"] == "processing"  # it trained meanwhile
        server.until(_at_step(server, training["id"], 14), 120)  # past the checkpoint at 12
        server.kill()

        again = servers()
        ended = again.until(
            lambda: (
                (t := again.get(f"/v1/trainings/{training['id']}"))["status"] in ("succeeded", "failed", "canceled")
                and t
            ),
            300,
        )
        assert ended["status"] == "succeeded", ended
        assert "resuming from its last checkpoint" in ended["logs"]
        resumed_at = [line for line in ended["logs"].splitlines() if line.startswith("Resuming from the checkpoint")]
        assert resumed_at and int(resumed_at[0].split("step ")[1].split("/")[0]) >= 12
        hook.wait_for(lambda events: events and events[-1]["status"] == "succeeded", 30)
        assert hook.events()[-1]["output"]["version"].startswith("alice/resumed:")
        folder = tmp_path / "data" / "trainings" / training["id"]  # what resuming needed is removed, not the weights
        again.until(lambda: [p.name for p in folder.iterdir()] == ["weights.tar"], 30)
    finally:
        hook.close()


@pytest.mark.slow
def test_cancel_ends_a_training_within_a_step(servers, tmp_path):
    dataset = "data:application/zip;base64," + base64.b64encode(songs_zip(tmp_path / "s.zip").read_bytes()).decode()
    server = servers()
    training = _train(server, dataset, "canceled")
    server.until(_at_step(server, training["id"], 2), 120)
    server.post(f"/v1/trainings/{training['id']}/cancel")
    started = time.monotonic()
    ended = server.until(
        lambda: (
            (t := server.get(f"/v1/trainings/{training['id']}"))["status"] in ("succeeded", "failed", "canceled") and t
        ),
        60,
    )
    assert ended["status"] == "canceled" and time.monotonic() - started < 10
    assert ended["output"] is None
    assert server.get("/v1/models/alice/canceled/versions")["results"] == []
    folder = tmp_path / "data" / "trainings" / training["id"]  # its pieces and checkpoint are removed
    server.until(lambda: not folder.exists(), 30)
