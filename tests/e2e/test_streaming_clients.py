"""Both official clients' streaming calls, unchanged, against a live server on the real engine (tiny
weights): `replicate.stream(...)` and `prediction.stream()` in Python, `replicate.stream(...)` in Node.
Each segment is a second of audio (MUSICGEN_STREAM_SECONDS=1), a WAV on this server."""

from __future__ import annotations

import io
import json

import httpx
import pytest
import replicate
import soundfile
from e2e_helpers import TOKEN, node_client

from musicgen_local.registry import LATEST

V1 = LATEST
REF = f"meta/musicgen:{V1}"


@pytest.fixture(scope="module")
def client(live_server) -> replicate.Client:
    return replicate.Client(api_token=TOKEN, base_url=live_server.url)


def segment_frames(url: str) -> tuple[int, int]:
    """(frames, channels) of one streamed segment."""
    samples, sr = soundfile.read(io.BytesIO(httpx.get(url).content), dtype="float32", always_2d=True)
    assert sr == 32000
    return samples.shape


def test_python_replicate_stream_yields_the_segments(client, live_server):
    events = list(client.stream(REF, input={"prompt": "jazz", "duration": 2, "model_version": "large", "seed": 4}))
    names = [e.event.value for e in events]
    assert set(names) == {"logs", "output", "done"} and names[-1] == "done"
    outputs = [e.data for e in events if e.event.value == "output"]  # http:// URLs stay strings, as the client does
    assert all(isinstance(o, str) and o.startswith(f"{live_server.url}/delivery/") for o in outputs)
    assert [segment_frames(o) for o in outputs] == [(32000, 1), (32000, 1)]
    assert str(events[0]) == "" and str(next(e for e in events if e.event.value == "output")) == outputs[0]
    assert events[0].data == "Using seed 4"


def test_python_prediction_stream_follows_a_created_prediction(client):
    pred = client.predictions.create(
        version=V1, input={"prompt": "x", "duration": 2, "model_version": "stereo-large"}, stream=True
    )
    events = list(pred.stream())
    outputs = [e.data for e in events if e.event.value == "output"]
    assert [segment_frames(o) for o in outputs] == [(32000, 2), (32000, 2)]
    assert events[-1].event.value == "done" and json.loads(events[-1].data) == {}
    pred.reload()
    assert pred.status == "succeeded" and pred.output.endswith("/out.wav")  # the final file, as without streaming
    assert [e.data for e in pred.stream()] == [e.data for e in events]  # a finished prediction replays whole


def test_python_stream_raises_the_prediction_error(client):
    with pytest.raises(RuntimeError, match="Must provide either prompt or input_audio"):
        list(client.stream(REF, input={"duration": 1}))


def test_node_replicate_stream_yields_file_outputs(live_server):
    result = node_client(
        "stream",
        baseUrl=live_server.url,
        token=TOKEN,
        version=V1,
        input={"prompt": "calm", "duration": 2, "model_version": "stereo-large", "seed": 5},
    )
    assert result["error"] is None
    seen = result["seen"]
    assert seen[0] == {"event": "logs", "id": "1", "data": "Using seed 5"}
    outputs = [e for e in seen if e["event"] == "output"]
    # FileOutput: the stream URL's path starts with /v1/files/, so the client wraps each segment
    assert [(o["type"], o["head"]) for o in outputs] == [("FileOutput", "RIFF")] * 2
    assert all(o["url"].startswith(f"{live_server.url}/delivery/") for o in outputs)
    assert outputs[0]["bytes"] == outputs[1]["bytes"] > 2 * 32000 * 4  # 1 s of 32-bit float stereo
    assert seen[-1]["event"] == "done" and [int(e["id"]) for e in seen] == list(range(1, len(seen) + 1))


def test_node_stream_errors_with_the_prediction_error(live_server):
    result = node_client("stream", baseUrl=live_server.url, token=TOKEN, version=V1, input={"duration": 1})
    assert result["error"] == "Must provide either prompt or input_audio"
