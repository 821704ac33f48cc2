"""MUSICGEN_MAX_BODY_BYTES holds on the stream: a chunked body (no Content-Length) past the limit is
answered 413 at once, and the server's memory does not grow with what the client keeps sending."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_helpers import V1, make_client

from musicgen_local.testing.live import free_port

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 1 << 20  # 1 MiB
SERVE = (
    "import sys, uvicorn; from musicgen_local.server import create_app; "
    "from musicgen_local.settings import Settings; from musicgen_local.testing.fake_engine import FakeEngine; "
    "uvicorn.run(create_app(Settings.from_env(), FakeEngine()), host='127.0.0.1', port=int(sys.argv[1]), "
    "log_level='warning')"
)
MULTIPART_HEAD = (
    b'--XyZ\r\nContent-Disposition: form-data; name="content"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n'
)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[subprocess.Popen, int]]:
    """The app on the fake engine in a process of its own, so its memory can be read from /proc."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MUSICGEN_MAX_BODY_BYTES": str(LIMIT),
        "MUSICGEN_DATA": str(tmp_path_factory.mktemp("data")),
    }
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(port)], env=env)
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health-check", timeout=1)
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline and proc.poll() is None, "the server did not start"
            time.sleep(0.1)
    yield proc, port
    proc.terminate()
    proc.wait(timeout=10)


def _rss_mib(pid: int, key: str) -> float:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(key))
    return int(line.split()[1]) / 1024


def _send_chunked(port: int, path: str, content_type: str, head: bytes, mib: int) -> tuple[str, int]:
    """POST `head` then `mib` MiB in 1 MiB chunks, stopping once an answer arrives: (status line, bytes sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        sent, chunk = 0, b"a" * (1 << 20)
        for data in (head, *[chunk] * mib):
            if select.select([s], [], [], 0)[0]:
                break
            s.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            sent += len(data)
        else:
            s.sendall(b"0\r\n\r\n")
        return s.recv(65536).decode(errors="replace").split("\r\n", 1)[0], sent


@pytest.mark.parametrize(
    "path, content_type, head",
    [
        ("/v1/predictions", "application/json", b'{"version": "' + V1.encode() + b'", "input": {"prompt": "'),
        ("/v1/files", "multipart/form-data; boundary=XyZ", MULTIPART_HEAD),
    ],
)
def test_chunked_body_past_the_limit_is_413_at_once_with_flat_memory(server, path, content_type, head):
    proc, port = server
    before = _rss_mib(proc.pid, "VmRSS:")
    status, sent = _send_chunked(port, path, content_type, head, mib=50)
    assert status == "HTTP/1.1 413 Request Entity Too Large"
    assert sent < 25 << 20  # answered long before the 50 MiB were sent
    assert _rss_mib(proc.pid, "VmHWM:") - before < 15  # peak growth: around the 1 MiB limit, not the body
    assert httpx.get(f"http://127.0.0.1:{port}/health-check").status_code == 200


def test_declared_length_past_the_limit_is_413_and_a_body_within_it_passes(tmp_path):
    with make_client(tmp_path, settings={"max_body_bytes": 4096}) as c:
        resp = c.post("/v1/files", files={"content": ("a.wav", b"x" * 8192)})
        assert resp.status_code == 413
        assert resp.json()["detail"] == "Request bodies are limited to 4096 bytes (MUSICGEN_MAX_BODY_BYTES)."
        assert c.post("/v1/files", files={"content": ("a.wav", b"x" * 1000)}).status_code == 201
