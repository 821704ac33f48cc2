"""With the fast decoder, concurrent predictions on the server decode as one batch, and each one's
audio is byte-for-byte what the same input gives alone (PyPI `replicate` client, live server)."""

from __future__ import annotations

import time

import httpx
import replicate
from e2e_helpers import TOKEN, LiveServer

from musicgen_local.engine import Request, load_engine

V1 = "b05b1dff1d8c6dc63d14b0cdb42135378dcb87f6373b0d3d341ede46e59e2b38"
MODEL = "stereo-melody-large"


def test_concurrent_predictions_share_a_batch_and_keep_their_audio(live_settings, engine, tmp_path):
    batching_engine = load_engine(live_settings.with_(decoder="fast", max_batch=3))
    batching_engine.batching.scheduler.max_wait_s = 60  # a loaded CI machine must not split the batch
    inputs = [{"prompt": "lofi", "duration": 2, "model_version": MODEL, "seed": 11},
              {"prompt": "jazz", "duration": 1, "model_version": MODEL, "seed": 12, "top_p": 0.9},
              {"prompt": "rock", "duration": 1, "model_version": MODEL, "seed": 13, "output_format": "mp3"}]
    with LiveServer(live_settings.with_(data_dir=tmp_path / "data"), batching_engine) as server:
        client = replicate.Client(api_token=TOKEN, base_url=server.url)
        with batching_engine._lock:  # the GPU is busy: the three predictions pile up behind it
            predictions = [client.predictions.create(version=V1, input=i) for i in inputs]
            deadline = time.monotonic() + 30
            while batching_engine.batching.scheduler.expected(MODEL) < 3:
                assert time.monotonic() < deadline, "the predictions never reached the engine"
                time.sleep(0.01)
        for prediction in predictions:
            prediction.wait()
        outputs = [httpx.get(p.output).content for p in predictions]

    for i, (prediction, output) in enumerate(zip(predictions, outputs, strict=True)):
        assert prediction.status == "succeeded", prediction.error
        assert "Decoding in a batch of 3 requests\n" in prediction.logs
        alone = engine.generate(Request(**inputs[i]), tmp_path / f"alone-{i}")  # reference decoder, alone
        assert output == alone.path.read_bytes()
