"""Cog's HTTP server (coglet on predict.py) from the same image, given the README's other command."""

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
