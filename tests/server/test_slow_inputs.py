"""No number of slow inputs delays a prediction that has none: predictions whose `input_audio` URL never answers
queue in a lane of their own in the dispatcher, so they never hold the slots of the engine's capacity a text-only
prediction needs (with MUSICGEN_MAX_BATCH 1 the engine takes 2 runs at once: before, 2 silent URLs were enough to
hold a text prediction until their download deadline)."""

from __future__ import annotations

import socket
import time

import pytest
from server_helpers import V1, make_client, wait_done

from musicgen_local.engine.local import LocalEngine


@pytest.fixture
def silent_url():
    """A server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/melody.wav"
    listener.close()


@pytest.mark.slow
def test_silent_input_urls_hold_up_no_text_only_prediction(settings, tmp_path, silent_url):
    config = {"max_batch": 1, "input_timeout": 20.0, "warmup": "none", "weights_dir": settings.weights_dir}
    engine = LocalEngine(settings.with_(**config, data_dir=tmp_path / "engine"))
    try:
        with make_client(tmp_path, engine, settings=config) as c:
            melody = {"model_version": "melody-large", "prompt": "x", "duration": 1, "input_audio": silent_url}
            stalled = [c.post("/v1/predictions", json={"version": V1, "input": melody}).json()["id"] for _ in range(8)]
            plain = {"model_version": "large", "prompt": "y", "duration": 1}
            text = c.post("/v1/predictions", json={"version": V1, "input": plain}).json()["id"]
            done = wait_done(c, text, timeout=120)
            assert done["status"] == "succeeded", done
            # the silent downloads are still waiting for their 20 s deadline: none has ended yet
            assert [c.get(f"/v1/predictions/{p}").json()["status"] for p in stalled] == ["starting"] * 8
            for p in stalled:
                c.post(f"/v1/predictions/{p}/cancel")
            time.sleep(0.5)
    finally:
        engine.close()
