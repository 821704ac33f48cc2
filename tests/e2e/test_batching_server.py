"""Concurrent predictions on a live server decode as one batch, and each one's audio is byte-for-byte
what the same input gives alone (PyPI `replicate` client)."""

from __future__ import annotations

import time

import httpx
import replicate
from e2e_helpers import TOKEN

from musicgen_local.registry import LATEST

V1 = LATEST
MODEL = "stereo-melody-large"


def test_predictions_joining_a_running_one_share_its_batch_and_keep_their_audio(live_server):
    client = replicate.Client(api_token=TOKEN, base_url=live_server.url)
    inputs = [
        {"prompt": "lofi", "duration": 8, "model_version": MODEL, "seed": 11},
        {"prompt": "jazz", "duration": 1, "model_version": MODEL, "seed": 12, "top_p": 0.9},
        {"prompt": "rock", "duration": 2, "model_version": MODEL, "seed": 13, "output_format": "mp3"},
    ]
    first = client.predictions.create(version=V1, input=inputs[0])
    deadline = time.monotonic() + 60
    while "%|" not in (first := client.predictions.get(first.id)).logs:  # decoding: the others join it
        assert time.monotonic() < deadline, first.logs
        time.sleep(0.05)
    predictions = [first] + [client.predictions.create(version=V1, input=i) for i in inputs[1:]]
    for prediction in predictions:
        prediction.wait()
    for prediction, inp in zip(predictions, inputs, strict=True):
        assert prediction.status == "succeeded", prediction.error
        assert "Decoding in a batch of 2 requests\n" in prediction.logs or "batch of 3" in prediction.logs
        alone = client.predictions.create(version=V1, input=inp)
        alone.wait()
        assert "Decoding in a batch" not in alone.logs
        assert httpx.get(prediction.output).content == httpx.get(alone.output).content
