"""A request body must keep coming (MUSICGEN_BODY_TIMEOUT plus a second per MUSICGEN_BODY_MIN_RATE bytes), and one
client address keeps at most MUSICGEN_MAX_CONNECTIONS_PER_CLIENT connections: hundreds of connections trickling
their bodies from one address no longer hold every file descriptor, and `/health-check` and creates from elsewhere
are answered (issue 31, item 10). Real sockets against a served process; the tricklers connect from 127.0.0.2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from server_helpers import HERE, V1

from musicgen_local.testing.live import free_port

TRICKLER = ("127.0.0.2", 0)  # another client address on the loopback interface


def _head(path: str = "/v1/predictions", length: int = 10_000) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _answer(conn: socket.socket, timeout: float = 20) -> bytes:
    """Everything the server sends until it closes the connection."""
    conn.settimeout(timeout)
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# Runs fake_server.py with at most N open files (soft and hard, so the server cannot raise it): python -c THIS N ...
WITH_FEW_FILES = (
    "import resource, runpy, sys; n = int(sys.argv.pop(1)); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)) if n else None; "
    "sys.argv.pop(0); runpy.run_path(sys.argv[0], run_name='__main__')"
)


def _serve(tmp_path: Path, env: dict[str, str], open_files: int = 0) -> tuple[subprocess.Popen, str]:
    """`musicgen-local serve` on the fake engine, with at most `open_files` file descriptors (as the probe's 600)."""
    port = free_port()
    args = [str(HERE / "fake_server.py"), str(tmp_path / "data"), str(port), "30", "0.01"]
    proc = subprocess.Popen(
        [sys.executable, "-c", WITH_FEW_FILES, str(open_files), *args],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env},
        stdout=(tmp_path / "server.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/health-check", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
        time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=30)


@pytest.mark.slow
def test_a_trickled_body_is_answered_408_and_a_slow_honest_one_is_taken(tmp_path):
    proc, url = _serve(tmp_path, {"MUSICGEN_BODY_TIMEOUT": "1", "MUSICGEN_BODY_MIN_RATE": "100"})
    try:
        port = int(url.rsplit(":", 1)[1])
        trickling = socket.create_connection(("127.0.0.1", port))
        trickling.sendall(_head())
        answer = b""
        for _ in range(200):  # a byte every 0.1 s, far under 100 bytes/s, until the server has had enough
            try:
                trickling.sendall(b" ")
            except OSError:
                break
            try:
                answer = _answer(trickling, timeout=0.1)
                break
            except TimeoutError:
                continue
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"MUSICGEN_BODY_TIMEOUT" in answer

        body = b'{"version": "%s", "input": {"prompt": "slow link", "duration": 1}}' % V1.encode()
        body += b" " * (4000 - len(body))  # 4000 bytes at 2000 bytes/s: past the 1 s, well within the rate
        honest = socket.create_connection(("127.0.0.1", port))
        honest.sendall(_head(length=len(body)))
        for start in range(0, len(body), 400):
            honest.sendall(body[start : start + 400])
            time.sleep(0.2)
        honest.settimeout(20)
        assert honest.recv(65536).startswith(b"HTTP/1.1 201 ")
        honest.close()
        log = (tmp_path / "server.log").read_text()
        assert "came too slowly" in log and "Traceback" not in log
    finally:
        _stop(proc)


@pytest.mark.slow
def test_hundreds_of_trickling_connections_from_one_address_do_not_starve_others(tmp_path):
    cap, tricklers = 8, 300
    env = {"MUSICGEN_MAX_CONNECTIONS_PER_CLIENT": str(cap), "MUSICGEN_BODY_TIMEOUT": "5"}
    proc, url = _serve(tmp_path, env, open_files=200)  # fewer descriptors than tricklers
    try:
        port = int(url.rsplit(":", 1)[1])
        held = []
        for _ in range(tricklers):
            conn = socket.create_connection(("127.0.0.1", port), source_address=TRICKLER)
            conn.sendall(_head() + b"{")  # and never the rest
            held.append(conn)
        health = httpx.get(f"{url}/health-check", timeout=10)
        create = httpx.post(
            f"{url}/v1/predictions", json={"version": V1, "input": {"prompt": "x", "duration": 1}}, timeout=10
        )
        assert health.status_code == 200 and create.status_code == 201

        answers = [_answer(conn, timeout=10) for conn in held]  # the first ones wait out the body deadline
        refused = [a for a in answers if a.startswith(b"HTTP/1.1 429 ")]
        timed_out = [a for a in answers if a.startswith(b"HTTP/1.1 408 ")]
        assert (len(refused), len(timed_out)) == (tricklers - cap, cap)
        assert b"retry-after: 1" in refused[0].lower() and b"MUSICGEN_MAX_CONNECTIONS_PER_CLIENT" in refused[0]
        for conn in held:
            conn.close()
        assert httpx.get(f"{url}/health-check", timeout=10).status_code == 200
        log = (tmp_path / "server.log").read_text()
        assert log.count("MUSICGEN_MAX_CONNECTIONS_PER_CLIENT") == 1  # one warning for the burst, not 292
    finally:
        _stop(proc)
