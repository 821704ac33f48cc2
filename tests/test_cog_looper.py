"""predict_looper.py under Cog's own server (coglet, outside Docker) on tiny weights: the looper's published schema,
and a prediction that runs the whole pipeline (the tiny model makes noise, with no beat to lock to, so it ends with
the looper's message saying what was tried)."""

import httpx
import pytest

from musicgen_local.looper import schema as looper_schema
from musicgen_local.looper.stretch import available
from tests.cog_helpers import CogServer


@pytest.fixture(scope="module")
def cog_looper(tiny_weights, tmp_path_factory):
    log = tmp_path_factory.mktemp("cog-looper") / "server.log"
    server = CogServer(tiny_weights, log, "--looper", env={"MUSICGEN_WARMUP": "none"})
    yield server.url
    server.stop()


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
