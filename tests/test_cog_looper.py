"""predict_looper.py under Cog's own server (coglet, outside Docker) on tiny weights: the looper's published schema,
and a prediction that runs the whole pipeline (the tiny model makes noise, with no beat to lock to, so it ends with
the looper's message saying what was tried)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from musicgen_local.looper import schema as looper_schema
from musicgen_local.looper.stretch import available
from musicgen_local.testing.live import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cog_looper(tiny_weights, tmp_path_factory):
    port = free_port()
    log = (tmp_path_factory.mktemp("cog-looper") / "server.log").open("w")
    env = dict(os.environ, MUSICGEN_WEIGHTS=str(tiny_weights), MUSICGEN_DEVICES="cpu", MUSICGEN_WARMUP="none")
    proc = subprocess.Popen(
        [sys.executable, "-m", "musicgen_local.cli", "cog-serve", "--looper", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health-check", timeout=2).json()["status"] == "READY":
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, Path(log.name).read_text()
        time.sleep(1)
    else:
        proc.kill()
        pytest.fail("cog server not ready: " + Path(log.name).read_text())
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.slow
def test_the_looper_predictor_serves_the_published_schema(cog_looper):
    served = httpx.get(f"{cog_looper}/openapi.json").json()["components"]["schemas"]
    published = looper_schema.openapi_schema()["components"]["schemas"]
    for name, prop in published["Input"]["properties"].items():
        assert {k: served["Input"]["properties"][name].get(k) for k in prop} == prop, name
    assert served["Input"]["required"] == ["prompt"]
    assert set(served["Output"]["properties"]) == {f"variation_{i:02d}" for i in range(1, 21)}


@pytest.mark.slow
@pytest.mark.skipif(not available(), reason="rubberband-cli is not installed (make install)")
def test_a_loop_runs_the_pipeline_and_says_what_was_tried(cog_looper):
    body = {"input": {"prompt": "drums", "bpm": 120, "variations": 1, "max_duration": 2, "seed": 9}}
    r = httpx.post(f"{cog_looper}/predictions", timeout=600, json=body)
    out = r.json()
    assert r.status_code == 200 and out["status"] == "failed", out
    assert "Failed to generate a loop in the requested 120 bpm" in out["error"]
