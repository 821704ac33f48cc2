"""The PyPI `replicate` client (1.0.7), unchanged except for `base_url`."""

from __future__ import annotations

import time

import pytest
import replicate
from e2e_helpers import TOKEN, LiveServer, audio_info
from replicate.exceptions import ModelError, ReplicateError
from replicate.helpers import FileOutput

from musicgen_local.registry import LATEST

V1 = LATEST
REF = f"meta/musicgen:{V1}"


@pytest.fixture(scope="module")
def client(live_server) -> replicate.Client:
    return replicate.Client(api_token=TOKEN, base_url=live_server.url)


def test_run_returns_the_output_url(client, live_server):
    output = client.run(REF, input={"prompt": "jazz", "duration": 1, "model_version": "large", "seed": 3})
    assert isinstance(output, str) and output.startswith(f"{live_server.url}/delivery/")
    assert audio_info(output) == (1, 32000, 32000)


def test_run_uploads_a_local_melody_file(client, melody_wav):
    with open(melody_wav, "rb") as f:
        output = client.run(
            REF, input={"prompt": "hum", "duration": 1, "model_version": "stereo-melody-large", "input_audio": f}
        )
    assert audio_info(output) == (2, 32000, 32000)
    latest = client.predictions.list().results[0]
    assert latest.output == output and "/v1/files/" in latest.input["input_audio"]


def test_semantic_error_raises_model_error_with_the_message(client):
    with pytest.raises(ModelError, match="Must provide either prompt or input_audio"):
        client.run(REF, input={"duration": 1})


def test_schema_error_is_a_422_replicate_error(client):
    with pytest.raises(ReplicateError) as info:
        client.predictions.create(version=V1, input={"prompt": "x", "duration": "long"})
    assert info.value.status == 422 and "input.duration" in info.value.detail


def test_create_wait_timeout_get_and_cancel(client):
    pred = client.predictions.create(version=V1, input={"prompt": "long", "duration": 30}, wait=1)
    assert pred.status == "starting"  # still generating: a blocking create that timed out says `starting`
    while (pred := client.predictions.get(pred.id)).status == "starting":
        time.sleep(0.05)
    assert pred.status == "processing"
    client.predictions.cancel(pred.id)
    t0 = time.monotonic()
    pred.wait()
    assert pred.status == "canceled" and pred.output is None
    assert time.monotonic() - t0 < 5  # ended between decoding steps, not after 30 s of audio


def test_restart_keeps_predictions_and_outputs(live_settings, engine, client, live_server):
    done = client.run(REF, input={"prompt": "keep me", "duration": 1, "model_version": "large"})
    pred_id = done.split("/")[-2]
    with LiveServer(live_settings, engine) as second:  # a second process over the same data directory
        again = replicate.Client(api_token=TOKEN, base_url=second.url).predictions.get(pred_id)
        assert again.status == "succeeded" and again.output == f"{second.url}/delivery/{pred_id}/out.wav"
        assert audio_info(again.output) == (1, 32000, 32000)


def test_data_uri_outputs_come_back_as_file_output(live_settings, engine):
    """With MUSICGEN_OUTPUT=data-uri, code that reads the output as a file works unchanged."""
    with LiveServer(live_settings.with_(output="data-uri"), engine) as server:
        client = replicate.Client(api_token=TOKEN, base_url=server.url)
        output = client.run(REF, input={"prompt": "jazz", "duration": 1, "model_version": "large"})
        assert isinstance(output, FileOutput)
        data = output.read()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
