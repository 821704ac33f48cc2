"""Ring 3: a real uvicorn server on 127.0.0.1, the real engine on tiny weights, the official clients."""

from __future__ import annotations

import json
import math
import shutil
import socket
import struct
import subprocess
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import httpx
import pytest
import uvicorn

from musicgen_local.server import create_app

E2E = Path(__file__).resolve().parent
TOKEN = "r8_local_test_token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, settings, engine) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(settings, engine), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def live_settings(settings, tmp_path_factory):
    return settings.with_(data_dir=tmp_path_factory.mktemp("server-data"), api_token=TOKEN)


@pytest.fixture(scope="module")
def live_server(live_settings, engine) -> Iterator[LiveServer]:
    with LiveServer(live_settings, engine) as server:
        yield server


@pytest.fixture(scope="session")
def melody_wav(tmp_path_factory) -> Path:
    """2 s of a 440 Hz sine, 32 kHz mono 16-bit."""
    path = tmp_path_factory.mktemp("melody") / "melody.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(32000)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / 32000)))
                               for i in range(64000)))
    return path


def node_client(action: str, **args) -> dict:
    """Run tests/e2e/client.mjs with one action; it prints one JSON object."""
    if shutil.which("node") is None or not (E2E / "node_modules" / "replicate").exists():
        pytest.skip("npm replicate not installed: run `make install` (npm ci --prefix tests/e2e)")
    proc = subprocess.run(["node", str(E2E / "client.mjs"), action, json.dumps(args)], capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def audio_info(url: str) -> tuple[int, int, int]:
    """(channels, sample rate, frames) of a wav output, fetched without a token like the Node client does."""
    resp = httpx.get(url)
    resp.raise_for_status()
    path = Path(f"/tmp/e2e-{time.monotonic_ns()}.wav")
    path.write_bytes(resp.content)
    try:
        with wave.open(str(path)) as w:
            return w.getnchannels(), w.getframerate(), w.getnframes()
    finally:
        path.unlink()
