"""Ring-1 helpers and fixtures: the real app on the torch-free fake engine, plus a local webhook receiver."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from musicgen_local.registry import PUBLISHED
from musicgen_local.server import create_app
from musicgen_local.settings import Settings
from musicgen_local.testing import live
from musicgen_local.testing.fake_engine import FakeEngine

V1, V2 = PUBLISHED


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

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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
