"""A connection that does not send a whole request head in time is closed (slowloris), and nothing else is cut:
a request whose answer takes longer than that deadline is answered."""

from __future__ import annotations

import socket

import httpx
from server_helpers import V1


def test_connections_that_send_no_whole_head_are_closed_and_slow_answers_are_not(processes):
    server = processes(step_delay_s=0.02, env={"MUSICGEN_HEADER_TIMEOUT": "1"})
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
    trickling = socket.create_connection(("127.0.0.1", server.port))
    trickling.sendall(b"GET /health-check HTTP/1.1\r\nHost: x\r\n")  # and never the blank line that ends it
    for conn in [*silent, trickling]:
        conn.settimeout(15)
        assert conn.recv(1) == b""  # the server closed it
        conn.close()
    slow = httpx.post(
        f"{server.url}/v1/predictions",
        headers={"Prefer": "wait=20"},
        timeout=30,
        json={"version": V1, "input": {"prompt": "two seconds", "duration": 2}},
    )
    assert slow.status_code == 201 and slow.json()["status"] == "succeeded"
