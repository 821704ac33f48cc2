"""predict.py under coglet when the device fails for good: the prediction fails with the engine's message,
and coglet's /health-check turns UNHEALTHY (through Predictor.healthcheck), so that whatever runs the
container replaces it. The fault is injected into the worker process by a `sitecustomize` that makes the
decode step raise what torch raises on a poisoned CUDA context."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from musicgen_local.testing.live import free_port

ROOT = Path(__file__).resolve().parents[1]
SITECUSTOMIZE = """
from musicgen_local.engine.fast.model import StaticLM

_original, _calls = StaticLM.step, [0]


def _step(self, *args, **kwargs):
    _calls[0] += 1
    if _calls[0] > {after}:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    return _original(self, *args, **kwargs)


StaticLM.step = _step
"""


@pytest.fixture
def faulty_cog_server(tiny_weights, tmp_path):
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SITECUSTOMIZE.format(after=100))  # the self-check takes 53 steps
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    env = dict(
        os.environ,
        MUSICGEN_WEIGHTS=str(tiny_weights),
        MUSICGEN_WARMUP="large",
        PYTHONPATH=os.pathsep.join([str(inject), str(ROOT), *sys.path]),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "musicgen_local.cli", "cog-serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{url}/health-check", timeout=2).json()["status"] == "READY":
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()
        time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.slow
def test_a_lost_device_fails_the_prediction_and_turns_coglet_unhealthy(faulty_cog_server):
    body = httpx.post(
        f"{faulty_cog_server}/predictions",
        timeout=300,
        json={"input": {"model_version": "large", "prompt": "lofi", "duration": 2, "seed": 5}},
    ).json()
    assert body["status"] == "failed"
    assert "failed with an unrecoverable error" in body["error"] and "illegal memory access" in body["error"]
    deadline = time.monotonic() + 30
    while (health := httpx.get(f"{faulty_cog_server}/health-check", timeout=15).json())["status"] != "UNHEALTHY":
        assert time.monotonic() < deadline, health
        time.sleep(0.5)
    assert health["user_healthcheck_error"]
