"""The official npm `replicate@1.4.0` client, unchanged except for `baseUrl`."""

from __future__ import annotations

from e2e_helpers import TOKEN, audio_info, node_client

from musicgen_local.registry import LATEST

V1 = LATEST


def test_run_returns_the_output_url_and_reports_progress(live_server):
    result = node_client(
        "run",
        baseUrl=live_server.url,
        token=TOKEN,
        version=V1,
        input={"prompt": "calm piano", "duration": 1, "model_version": "stereo-large", "seed": 5},
    )
    assert result["output"] == f"{live_server.url}/delivery/{result['latest']['id']}/out.wav"
    assert result["latest"]["logs"].startswith("Using seed 5\n")
    # the client's own parseProgressFromLogs reads our last tqdm line: all decoding steps, 100 %
    # (1 s = 50 frames, plus the engine's delay-pattern steps)
    last = result["progress"][-1]
    assert last["percentage"] == 1 and last["current"] == last["total"] >= 50
    assert audio_info(result["output"]) == (2, 32000, 32000)


def test_run_with_a_local_melody_file_uploads_it(live_server, melody_wav):
    result = node_client(
        "run",
        baseUrl=live_server.url,
        token=TOKEN,
        version=V1,
        melodyPath=str(melody_wav),
        input={"prompt": "a melody", "duration": 1, "model_version": "melody-large"},
    )
    assert "/v1/files/" in result["latest"]["input"]["input_audio"]
    assert result["latest"]["status"] == "succeeded"
    assert audio_info(result["output"]) == (1, 32000, 32000)


def test_webhook_completed_only_and_signature_valid(live_server):
    result = node_client(
        "webhook",
        baseUrl=live_server.url,
        token=TOKEN,
        version=V1,
        input={"prompt": "drums", "duration": 1, "model_version": "large"},
    )
    assert result["created"]["status"] == "starting"
    assert result["statuses"] == ["succeeded"]
    assert result["valid"] == [True] and result["tampered"] is False


def test_wrong_token_is_rejected(live_server):
    result = node_client("badToken", baseUrl=live_server.url, token="wrong", version=V1)
    assert result["status"] == 401 and "You did not pass a valid authentication token" in result["error"]
