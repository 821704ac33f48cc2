"""The MCP door's guards (issue 31, item 8), against the v1 API on the fake engine: a tool refuses an id that is not
an id and escapes what it puts in a path (`../trainings/<id>` canceled a training); over stdio a malformed line gets
a JSON-RPC error; over HTTP the door checks Host and Origin wherever it is bound, requires the token when there is
one, and will not bind past loopback without one."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from mcp import Client

from musicgen_local import mcp_server
from musicgen_local.registry import PUBLISHED
from musicgen_local.server import create_app
from musicgen_local.settings import Settings
from musicgen_local.testing.fake_engine import FakeEngine
from musicgen_local.testing.live import LiveServer, free_port

TRAIN = f"/v1/models/meta/musicgen/versions/{PUBLISHED[0]}/trainings"
TOKEN = "r8_door_token"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


@pytest.fixture
def api(tmp_path) -> Iterator[LiveServer]:
    engine = FakeEngine(step_delay_s=0.2)
    engine.train_steps = 1000  # a training that runs until it is canceled
    with LiveServer(create_app(Settings(data_dir=tmp_path / "data"), engine)) as live:
        yield live


def _door(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "musicgen_local.cli", "mcp", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "MUSICGEN_API_TOKEN": ""},
    )


def _lines(proc: subprocess.Popen, count: int, timeout: float = 30) -> list[dict]:
    """The next `count` JSON lines the door writes (fewer if it falls silent for `timeout` s)."""
    lines: queue.Queue[bytes] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    found: list[dict] = []
    while len(found) < count:
        try:
            found.append(json.loads(lines.get(timeout=timeout)))
        except queue.Empty:
            break
    return found


def test_tools_refuse_ids_that_are_not_ids_and_a_training_is_not_canceled_through_them(api):
    httpx.post(f"{api.url}/v1/models", json={"owner": "alice", "name": "tune"}).raise_for_status()
    body = {
        "destination": "alice/tune",
        "input": {"dataset_path": "https://example.com/a.zip", "model_version": "large"},
    }
    training = httpx.post(api.url + TRAIN, json=body).json()["id"]

    async def session() -> dict:
        async with Client(mcp_server.build(api.url)) as client:

            async def call(tool: str, args: dict):
                return await client.call_tool(tool, args)

            return {
                "cancel": await call("cancel_prediction", {"prediction_id": f"../trainings/{training}"}),
                "encoded": await call("cancel_prediction", {"prediction_id": f"..%2Ftrainings%2F{training}"}),
                "get": await call("get_prediction", {"prediction_id": "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}),
                "wait": await call("wait_for_prediction", {"prediction_id": f"{training}?x"}),
                "model": await call("generate_music", {"input": {"prompt": "x"}, "model": "../trainings/x"}),
                "unknown": await call("get_prediction", {"prediction_id": "a" * 26}),
                "made": await call(
                    "generate_music",
                    {"input": {"prompt": "x", "duration": 1}, "model": "meta/musicgen", "wait_seconds": 0},
                ),
            }

    out = asyncio.run(session())
    for name in ("cancel", "encoded", "get", "wait", "model"):
        assert out[name].is_error, name
    assert "[a-z0-9]{26}" in out["cancel"].content[0].text
    assert "lowercase letters, digits" in out["model"].content[0].text
    assert "404" in out["unknown"].content[0].text  # a well-formed id reaches the API, escaped
    made = out["made"].structured_content
    assert not out["made"].is_error and made["status"] == "starting"  # the model's path, escaped, reached the API
    httpx.post(f"{api.url}/v1/predictions/{made['id']}/cancel")
    assert httpx.get(f"{api.url}/v1/trainings/{training}").json()["status"] in ("starting", "processing")
    httpx.post(f"{api.url}/v1/trainings/{training}/cancel")


def test_a_malformed_line_on_stdio_gets_a_json_rpc_error_and_the_session_goes_on(api):
    door = _door("--url", api.url)
    try:
        for line in ("this is not json", '{"jsonrpc": "2.0", "method": 7}', "[1, 2", json.dumps(INITIALIZE)):
            door.stdin.write(line.encode() + b"\n")
        door.stdin.flush()
        answers = _lines(door, 4)
    finally:
        door.kill()
        door.wait(timeout=30)
    assert [a.get("error", {}).get("code") for a in answers[:3]] == [-32700, -32600, -32700]
    assert all(a["id"] is None and a["jsonrpc"] == "2.0" for a in answers[:3])
    assert answers[3]["id"] == 1 and answers[3]["result"]["serverInfo"]["name"] == "musicgen-local"


def _post(url: str, **headers: str) -> httpx.Response:
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json", **headers}
    return httpx.post(url, json=INITIALIZE, headers=headers, timeout=10)


def _serving(*args: str) -> tuple[subprocess.Popen, str, int]:
    port = free_port()
    door = _door("--transport", "streamable-http", "--port", str(port), *args)
    host = args[args.index("--host") + 1] if "--host" in args else "127.0.0.1"
    url = f"http://{host}:{port}/mcp"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url, timeout=1)
            return door, url, port
        except httpx.TransportError:
            assert door.poll() is None and time.monotonic() < deadline, door.stderr.read().decode()
            time.sleep(0.1)


@pytest.mark.slow
def test_over_http_the_door_checks_host_and_origin_wherever_it_is_bound(api):
    door, url, port = _serving("--url", api.url, "--host", "127.0.0.2")  # loopback, but not a name the SDK knows
    try:
        assert _post(url, Host=f"evil.example:{port}").status_code == 421  # a rebound name
        assert _post(url, Origin="http://evil.example").status_code == 403  # a page elsewhere
        assert _post(url, Origin=f"http://localhost:{port}").status_code == 200
        assert _post(url).status_code == 200
    finally:
        door.kill()
        door.wait(timeout=30)


@pytest.mark.slow
def test_over_http_the_token_is_required_when_there_is_one(api):
    door, url, port = _serving("--url", api.url, "--token", TOKEN)
    try:
        assert _post(url).status_code == 401
        assert _post(url, Authorization="Bearer not-the-token").status_code == 401
        assert _post(url, Authorization=f"Bearer {TOKEN}").status_code == 200
    finally:
        door.kill()
        door.wait(timeout=30)


def test_past_loopback_the_door_will_not_serve_without_a_token(api):
    door = _door("--url", api.url, "--transport", "streamable-http", "--host", "0.0.0.0", "--port", str(free_port()))
    try:
        _, err = door.communicate(timeout=60)
    finally:
        door.kill()  # it should have exited on its own; if it serves, it is stopped here
        door.wait(timeout=30)
    assert door.returncode == 1 and "--token or MUSICGEN_API_TOKEN" in err.decode()
