"""Streams as a client sees them: the real app under uvicorn on 127.0.0.1, and an SSE reader."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import uvicorn

from musicgen_local.registry import LATEST
from musicgen_local.server import create_app
from musicgen_local.settings import Settings
from musicgen_local.testing.fake_engine import FakeEngine

V1 = LATEST
SSE = {"Accept": "text/event-stream"}


@dataclass(frozen=True)
class Sse:
    id: str | None
    event: str | None
    data: str


@dataclass
class Live:
    url: str
    app: object
    http: httpx.Client

    def create(self, stream: bool | None = None, **inputs) -> dict:
        body = {"version": V1, "input": {"prompt": "x", "duration": 2, **inputs}}
        if stream is not None:
            body["stream"] = stream  # the flag both clients still send
        resp = self.http.post(f"{self.url}/v1/predictions", json=body)
        assert resp.status_code == 201, resp.text
        return resp.json()

    def wait(self, pred_id: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.http.get(f"{self.url}/v1/predictions/{pred_id}").json()
            if body["status"] in ("succeeded", "failed", "canceled"):
                return body
            time.sleep(0.02)
        raise AssertionError(f"{pred_id} did not finish")


@contextmanager
def live(tmp_path, engine: FakeEngine | None = None, ping_s: float = 10.0, **settings) -> Iterator[Live]:
    """The app on the fake engine (or `engine`), served by uvicorn on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(Settings(data_dir=tmp_path / "data", **settings), engine or FakeEngine())
    app.state.streams.ping_s = ping_s
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    token = settings.get("api_token")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(headers=headers, timeout=10) as http:
            yield Live(f"http://127.0.0.1:{port}", app, http)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def parse(lines: Iterator[str]) -> Iterator[Sse]:
    """Events as the SSE spec assembles them; comments (keep-alives) come back as Sse(None, None, ':')."""
    fields: dict[str, list[str]] = {}
    for line in lines:
        if line.startswith(":"):
            yield Sse(None, None, ":")
        elif line:
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value.removeprefix(" "))
        elif fields:
            yield Sse(fields.get("id", [None])[-1], fields.get("event", [None])[-1], "\n".join(fields.get("data", [])))
            fields = {}


def events(http: httpx.Client, url: str, limit: int | None = None, **headers) -> list[Sse]:
    """The events of one GET on `url` (keep-alives left out), up to `limit` of them, then disconnect."""
    out = []
    with http.stream("GET", url, headers={**SSE, **headers}) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].split(";")[0] == "text/event-stream"
        for event in parse(resp.iter_lines()):
            if event.event is not None:
                out.append(event)
            if limit is not None and len(out) >= limit:
                break
    return out
