"""predict.py under Cog's own server (coglet 0.23, outside Docker) on tiny weights."""

import base64
import io
import time

import httpx
import pytest
import soundfile

from tests.cog_helpers import CogServer


@pytest.fixture(scope="module")
def cog_server(tiny_weights, tmp_path_factory):
    server = CogServer(tiny_weights, tmp_path_factory.mktemp("cog") / "server.log")
    yield server.url
    server.stop()


@pytest.mark.slow
def test_prediction_round_trip(cog_server):
    r = httpx.post(
        f"{cog_server}/predictions",
        timeout=300,
        json={"input": {"model_version": "stereo-large", "prompt": "lofi", "duration": 1, "seed": 5}},
    )
    body = r.json()
    assert r.status_code == 200 and body["status"] == "succeeded", body
    assert body["output"].startswith("data:audio/wav;base64,") or body["output"].startswith("data:audio/x-wav;")
    wav, sr = soundfile.read(io.BytesIO(base64.b64decode(body["output"].split(",", 1)[1])), always_2d=True)
    assert (sr, wav.shape) == (32000, (32000, 2))
    assert "Using seed 5" in body["logs"]


def test_schema_violation_is_422(cog_server):
    r = httpx.post(f"{cog_server}/predictions", timeout=60, json={"input": {"prompt": "x", "duration": "long"}})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "input", "duration"]


def test_semantic_error_fails_with_replicates_message(cog_server):
    r = httpx.post(f"{cog_server}/predictions", timeout=60, json={"input": {"duration": 1}})
    body = r.json()
    assert body["status"] == "failed"
    assert "Must provide either prompt or input_audio" in body["error"]


def _post(url: str, payload: dict, **kwargs) -> dict:
    response = httpx.post(f"{url}/predictions", json=payload, timeout=300, **kwargs)
    assert response.status_code in (200, 202), response.text
    return response.json()


@pytest.mark.slow
def test_concurrent_predictions_decode_in_one_batch_and_keep_their_solo_audio(cog_server):
    """Cog has no batching of its own: predict.py's async run() feeds the engine's device loop, which
    decodes concurrent predictions together. A long one starts; once its webhooks show it decoding,
    two more arrive and join its batch."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            seen.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    inputs = [
        {"model_version": "stereo-melody-large", "prompt": p, "duration": d, "seed": s}
        for p, d, s in (("lofi", 30, 1), ("jazz", 1, 2), ("rock", 2, 3))
    ]
    try:
        _post(
            cog_server,
            {"input": inputs[0], "webhook": f"http://127.0.0.1:{hook.server_port}/hook"},
            headers={"Prefer": "respond-async"},
        )
        deadline = time.monotonic() + 120
        while not any(" / " in (event.get("logs") or "") for event in seen):  # a progress line: decoding
            assert time.monotonic() < deadline, seen
            time.sleep(0.05)
        results: dict[int, dict] = {}

        def predict(i: int) -> None:  # no asserts here: the test's own thread reports what happened
            try:
                response = httpx.post(f"{cog_server}/predictions", json={"input": inputs[i]}, timeout=300)
            except httpx.HTTPError as error:
                results[i] = {"error": repr(error)}
            else:
                results[i] = {"http_status": response.status_code, "text": response.text}

        others = [threading.Thread(target=predict, args=(i,)) for i in (1, 2)]
        for thread in others:
            thread.start()
        for thread in others:
            thread.join(timeout=300)
        while not any(event.get("status") in ("succeeded", "failed") for event in seen):
            assert time.monotonic() < deadline + 180, seen[-1:]
            time.sleep(0.1)
    finally:
        hook.shutdown()
    for i in (1, 2):
        assert results.get(i, {}).get("http_status") == 200, (i, results.get(i))
        results[i] = json.loads(results[i]["text"])
    results[0] = next(event for event in seen if event.get("status") in ("succeeded", "failed"))
    for i, body in results.items():
        assert body["status"] == "succeeded", body
        assert "Decoding in a batch of" in body["logs"], (i, body["logs"])
    for i in (1, 2):  # the same input alone: the same file
        assert _post(cog_server, {"input": inputs[i]})["output"] == results[i]["output"]
