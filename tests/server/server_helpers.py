"""Ring-1 helpers and fixtures: the real app on the torch-free fake engine, plus a local webhook receiver, and
`musicgen-local serve` on the fake engine in a process of its own (ServerProcess, `processes`)."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from musicgen_local.registry import PUBLISHED
from musicgen_local.server import create_app
from musicgen_local.settings import Settings
from musicgen_local.testing import live
from musicgen_local.testing.fake_engine import FakeEngine

V1, V2 = PUBLISHED
HERE = Path(__file__).resolve().parent


def make_client(tmp_path, engine=None, settings: dict | None = None, **kwargs) -> TestClient:
    """`settings`: Settings fields to change; the rest are create_app's keyword arguments."""
    config = Settings(data_dir=tmp_path / "data", api_token=kwargs.pop("api_token", "")).with_(**(settings or {}))
    return TestClient(create_app(config, engine or FakeEngine(), **kwargs))


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def client(tmp_path, fake_engine) -> Iterator[TestClient]:
    with make_client(tmp_path, fake_engine, page_size=2, webhook_backoff_s=0.05) as c:
        yield c


def wait_done(client: TestClient, pred_id: str, timeout: float = 10.0, kind: str = "predictions") -> dict:
    """A prediction (or, with kind="trainings", a training) once it has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/{kind}/{pred_id}").json()
        if body["status"] in ("succeeded", "failed", "canceled"):
            return body
        time.sleep(0.02)
    raise AssertionError(f"{kind[:-1]} {pred_id} did not finish: {body}")


class Receiver:
    """An HTTP listener that records webhook deliveries (when they arrive); answers `fail_first` of them
    with 503, and each one `delay_s` after it arrived."""

    def __init__(self, fail_first: int = 0, delay_s: float = 0.0) -> None:
        self.calls: list[tuple[dict, bytes]] = []
        self.arrived: list[float] = []  # time.monotonic() of each call
        self.fail_first = fail_first
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.arrived.append(time.monotonic())
                receiver.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
                failing = len(receiver.calls) <= receiver.fail_first
                time.sleep(delay_s)
                try:
                    self.send_response(503 if failing else 200)
                    self.end_headers()
                except OSError:  # the sender gave up waiting
                    pass

            def log_message(self, *args) -> None:
                pass

        self.listen(Handler)

    def listen(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        """Serve `handler` on a free port of 127.0.0.1 at `self.url`, until close()."""
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[dict]:
        return [json.loads(body) for _, body in self.calls]

    def wait_for(self, predicate, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.events()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert predicate(self.events()), self.events()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


class HangingReceiver:
    """Takes connections (the kernel completes them) and never reads or answers a request."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"

    def close(self) -> None:
        self.sock.close()


LiveServer = live.LiveServer  # the app under uvicorn on 127.0.0.1


class ServerProcess:
    """`musicgen-local serve` on the fake engine, in a process of its own that tests can kill."""

    def __init__(
        self,
        data_dir: Path,
        grace_s: float = 30,
        step_delay_s: float = 0.01,
        ready: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port, self.data_dir = live.free_port(), data_dir
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (data_dir.parent / f"server-{self.port}.log").open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "fake_server.py"),
                str(data_dir),
                str(self.port),
                str(grace_s),
                str(step_delay_s),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), **(env or {})),
        )
        deadline = time.monotonic() + 30
        while ready:
            try:
                if httpx.get(f"{self.url}/health-check", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, Path(self.log.name).read_text()
            time.sleep(0.1)

    def create(self, prompt: str, duration: int, webhook: str | None = None) -> httpx.Response:
        body = {"version": V1, "input": {"prompt": prompt, "duration": duration}}
        if webhook:
            body |= {"webhook": webhook, "webhook_events_filter": ["completed"]}
        return httpx.post(f"{self.url}/v1/predictions", json=body, timeout=10)

    def train(self, destination: str, webhook: str | None = None) -> httpx.Response:
        """A training into `destination` (the model is created first, if it is not there yet)."""
        owner, _, name = destination.partition("/")
        httpx.post(f"{self.url}/v1/models", json={"owner": owner, "name": name}, timeout=10)
        body = {"destination": destination, "input": {"dataset_path": "https://example.com/songs.zip"}}
        if webhook:
            body |= {"webhook": webhook, "webhook_events_filter": ["completed"]}
        return httpx.post(f"{self.url}/v1/models/meta/musicgen/versions/{V1}/trainings", json=body, timeout=10)

    def get(self, pred_id: str, kind: str = "predictions") -> dict:
        return httpx.get(f"{self.url}/v1/{kind}/{pred_id}", timeout=10).json()

    def wait_for(self, pred_id: str, statuses: tuple[str, ...], timeout: float = 60, kind: str = "predictions") -> dict:
        deadline = time.monotonic() + timeout
        while (body := self.get(pred_id, kind))["status"] not in statuses:
            assert time.monotonic() < deadline, body
            time.sleep(0.05)
        return body

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture
def processes(tmp_path):
    started: list[ServerProcess] = []

    def start(**kwargs) -> ServerProcess:
        started.append(ServerProcess(tmp_path / "data", **kwargs))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def fuzz_settings(examples: int):
    """Hypothesis' settings for a schemathesis run over the published OpenAPI: reproducible (derandomized, no
    example database), the document's own examples first, no deadline or health check (a live server answers)."""
    from hypothesis import HealthCheck, Phase, settings

    return settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
