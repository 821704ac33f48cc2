"""Ring 3: a real uvicorn server on 127.0.0.1, the real engine on tiny weights, the official clients."""

from __future__ import annotations

import json
import math
import secrets
import shutil
import struct
import subprocess
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from musicgen_local import tuned
from musicgen_local.database import Database
from musicgen_local.registry import Registry, Version
from musicgen_local.server import create_app
from musicgen_local.testing import live

E2E = Path(__file__).resolve().parent
TOKEN = "r8_local_test_token"


class LiveServer(live.LiveServer):
    """The real app on `engine`, served on 127.0.0.1."""

    def __init__(self, settings, engine) -> None:
        super().__init__(create_app(settings, engine))


@pytest.fixture(scope="module")
def live_settings(settings, tmp_path_factory):
    return settings.with_(data_dir=tmp_path_factory.mktemp("server-data"), api_token=TOKEN)


@pytest.fixture(scope="module")
def live_server(live_settings, engine) -> Iterator[LiveServer]:
    with LiveServer(live_settings, engine) as server:
        yield server


def click_track_at_120(seed: int, generated) -> object:
    """The looper's test seam: a click track at 120 bpm as long as what the tiny model generated (its noise has no
    beat to find)."""
    from musicgen_local.testing import loop_signals

    return loop_signals.click_track(bpm=120.0, seconds=generated.shape[1] / 32000).audio


@pytest.fixture(scope="module")
def looper_server(live_settings) -> Iterator[LiveServer]:
    """A live server whose engine makes loops of the click track at 120 bpm (after really generating each row)."""
    from musicgen_local.engine.local import LocalEngine

    engine = LocalEngine(live_settings.with_(warmup="none"), loop_audio=click_track_at_120)
    try:
        with LiveServer(live_settings, engine) as server:
            yield server
    finally:
        engine.close()


@pytest.fixture(scope="session")
def melody_wav(tmp_path_factory) -> Path:
    """2 s of a 440 Hz sine, 32 kHz mono 16-bit."""
    path = tmp_path_factory.mktemp("melody") / "melody.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(32000)
        w.writeframes(
            b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / 32000))) for i in range(64000))
        )
    return path


def node_client(action: str, **args) -> dict:
    """Run tests/e2e/client.mjs with one action; it prints one JSON object."""
    if shutil.which("node") is None or not (E2E / "node_modules" / "replicate").exists():
        pytest.skip("npm replicate not installed: run `make install` (npm ci --prefix tests/e2e)")
    proc = subprocess.run(
        ["node", str(E2E / "client.mjs"), action, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
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


def add_lora_version(settings, model: str, *, base: str = "large", seed: int = 0) -> str:
    """A trained version of `model` (made with POST /v1/models) put straight into the registry of the server
    whose data dir is `settings.data_dir`, as a finished training would add it, without the minutes of
    training: a LoRA on every target of the tiny `base`, B far from zero so that it changes what the model
    says. Returns the version's id."""
    import torch

    from musicgen_local.engine.models import load_model
    from musicgen_local.training.lora import target_names

    lm = load_model(settings, base, "cpu").lm
    shapes = {name: p.shape for name, p in lm.named_parameters()}
    g = torch.Generator().manual_seed(seed)
    rank = 4
    adapters = {
        name: (torch.randn(rank, shapes[name][1], generator=g), 0.5 * torch.randn(shapes[name][0], rank, generator=g))
        for name in target_names(lm)
    }
    version_id = secrets.token_hex(32)
    weights = tuned.write_lora(
        Path(settings.data_dir) / "e2e-loras" / f"{version_id}.tar", base, adapters, alpha=float(rank)
    )
    registry = Registry(Database(Path(settings.data_dir) / "musicgen.sqlite3"))  # the file the server opens
    try:
        created = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        registry.add_version(Version(version_id, model, created, base=base, weights=str(weights), kind="lora"))
    finally:
        registry.close()
    return version_id
