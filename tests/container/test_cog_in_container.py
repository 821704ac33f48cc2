"""Cog's HTTP servers (coglet on predict.py, and on predict_looper.py) from the same image, given the other commands
docs/operating.md names."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
import soundfile
from container_helpers import Container

pytestmark = pytest.mark.timeout(3600)  # the first test builds the image (fixture `image`)
COG_SERVE = ["musicgen-local", "cog-serve", "--host", "0.0.0.0", "--port", "5000"]


def test_cog_server_answers_a_prediction_and_validates_inputs(image, tiny_weights, containers):
    cog = Container({str(tiny_weights): "/weights:ro"}, env={"MUSICGEN_WARMUP": "none"}, command=COG_SERVE).start()
    containers.append(cog)
    cog.wait_ready()
    response = httpx.post(
        f"{cog.url}/predictions",
        timeout=300,
        json={"input": {"model_version": "stereo-large", "prompt": "lofi", "duration": 1, "seed": 5}},
    )
    body = response.json()
    assert response.status_code == 200 and body["status"] == "succeeded", body
    media, data = body["output"].split(",", 1)
    assert media in ("data:audio/wav;base64", "data:audio/x-wav;base64")
    wav, rate = soundfile.read(io.BytesIO(base64.b64decode(data)), always_2d=True)
    assert (rate, wav.shape) == (32000, (32000, 2))
    # The schema the image holds in .cog/ (as `cog build` writes it) makes coglet refuse bad input with a 422.
    refused = httpx.post(f"{cog.url}/predictions", timeout=60, json={"input": {"prompt": "x", "duration": "long"}})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "input", "duration"]


def test_the_looper_cog_server_serves_its_schema_and_runs_its_pipeline(image, tiny_weights, containers):
    """`cog-serve --looper` rewrites .cog/ (the image's user owns it) and runs the looper's pipeline (rubberband)."""
    looper = Container(
        {str(tiny_weights): "/weights:ro"}, env={"MUSICGEN_WARMUP": "none"}, command=[*COG_SERVE, "--looper"]
    ).start()
    containers.append(looper)
    looper.wait_ready()
    schemas = httpx.get(f"{looper.url}/openapi.json", timeout=30).json()["components"]["schemas"]
    assert "bpm" in schemas["Input"]["properties"] and "variation_01" in schemas["Output"]["properties"]
    body = {"input": {"prompt": "drums", "bpm": 120, "variations": 1, "max_duration": 2, "seed": 9}}
    out = httpx.post(f"{looper.url}/predictions", timeout=600, json=body).json()
    # Tiny random weights make no loop at 120 bpm: the pipeline ran to its end and says so, as on the host.
    assert out["status"] == "failed" and "Failed to generate a loop in the requested 120 bpm" in out["error"], out
