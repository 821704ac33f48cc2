"""Create / wait / get / list / cancel against the fake engine."""

from __future__ import annotations

import base64
import io
import re
import time
import wave
from pathlib import Path

from fastapi.testclient import TestClient
from server_helpers import V1, V2, make_client, wait_done

from musicgen_local.server import create_app
from musicgen_local.settings import Settings
from musicgen_local.testing.fake_engine import FakeEngine

PROGRESS = re.compile(r"^\s*(\d+)%\s*\|.+?\|\s*(\d+)/(\d+)")  # the Node client's parseProgressFromLogs
KEYS = {
    "id",
    "model",
    "version",
    "input",
    "logs",
    "output",
    "data_removed",
    "error",
    "status",
    "created_at",
    "started_at",
    "completed_at",
    "source",
    "metrics",
    "urls",
}


def test_prefer_wait_returns_finished_prediction_with_playable_output(client):
    resp = client.post(
        "/v1/predictions",
        headers={"Prefer": "wait"},
        json={
            "version": f"meta/musicgen:{V1}",
            "input": {"prompt": "lofi", "duration": 2, "model_version": "stereo-large", "seed": 7},
        },
    )
    assert resp.status_code == 201
    body = resp.json()
    assert set(body) == KEYS
    assert (body["status"], body["model"], body["version"], body["error"]) == ("succeeded", "meta/musicgen", V1, None)
    assert body["logs"].startswith("Using seed 7\n")
    last = [m for line in body["logs"].splitlines() if (m := PROGRESS.match(line))][-1]
    assert last.groups() == ("100", "100", "100")
    assert body["metrics"]["predict_time"] > 0 and body["metrics"]["total_time"] >= body["metrics"]["predict_time"]
    assert body["urls"]["get"] == f"http://testserver/v1/predictions/{body['id']}"
    assert body["output"] == f"http://testserver/delivery/{body['id']}/out.wav"
    audio = client.get(body["output"])
    assert audio.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(audio.content)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getnframes()) == (2, 32000, 64000)


def test_without_wait_returns_201_starting_then_polls_to_success(client):
    resp = client.post("/v1/models/meta/musicgen/predictions", json={"input": {"prompt": "x", "duration": 1}})
    assert (resp.status_code, resp.json()["status"], resp.json()["version"]) == (201, "starting", V1)
    assert wait_done(client, resp.json()["id"])["status"] == "succeeded"


def test_wait_timeout_returns_starting_never_processing(tmp_path):
    with make_client(tmp_path, FakeEngine(step_delay_s=0.05)) as c:
        resp = c.post(
            "/v1/predictions",
            headers={"Prefer": "wait=1"},
            json={"version": V1, "input": {"prompt": "x", "duration": 3}},
        )
        body = resp.json()
        assert body["status"] == "starting" and body["output"] is None
        assert c.get(f"/v1/predictions/{body['id']}").json()["status"] == "processing"
        c.post(f"/v1/predictions/{body['id']}/cancel")


def test_all_version_forms_are_accepted(client):
    for version in (V1, V2, f"meta/musicgen:{V2}", "meta/musicgen"):
        body = client.post(
            "/v1/predictions",
            headers={"Prefer": "wait"},
            json={"version": version, "input": {"prompt": "x", "duration": 1}},
        ).json()
        assert body["status"] == "succeeded" and body["version"] == version.split(":")[-1].replace("meta/musicgen", V1)


def test_semantic_error_is_a_failed_prediction_with_the_message(client):
    body = client.post(
        "/v1/predictions", headers={"Prefer": "wait"}, json={"version": V1, "input": {"duration": 1}}
    ).json()
    assert (body["status"], body["error"], body["output"]) == (
        "failed",
        "Must provide either prompt or input_audio",
        None,
    )


def test_a_prompt_past_the_text_encoders_length_fails_before_it_reaches_the_device(client):
    """Issue 24: a 10 KB prompt took 4.5 GB in T5 and stalled every prediction for 13 s."""
    from musicgen_local.schema import MAX_PROMPT_CHARS

    long = client.post(
        "/v1/predictions",
        headers={"Prefer": "wait"},
        json={"version": V1, "input": {"prompt": "la " * 3400, "duration": 1}},
    ).json()
    assert (long["status"], long["started_at"]) == ("failed", None)
    assert long["error"].startswith(f"`prompt` is 10200 characters long; this server reads at most {MAX_PROMPT_CHARS}")
    just = client.post(
        "/v1/predictions",
        headers={"Prefer": "wait"},
        json={"version": V1, "input": {"prompt": "a" * MAX_PROMPT_CHARS, "duration": 1}},
    ).json()
    assert just["status"] == "succeeded"


def test_cancel_running_prediction_ends_canceled_between_steps(tmp_path):
    engine = FakeEngine(step_delay_s=0.02)
    with make_client(tmp_path, engine) as c:
        pred = c.post("/v1/predictions", json={"version": V1, "input": {"prompt": "x", "duration": 30}}).json()
        while c.get(f"/v1/predictions/{pred['id']}").json()["status"] != "processing":
            pass
        queued = c.post("/v1/predictions", json={"version": V1, "input": {"prompt": "y", "duration": 1}}).json()
        assert c.post(f"/v1/predictions/{queued['id']}/cancel").json()["status"] == "canceled"
        c.post(f"/v1/predictions/{pred['id']}/cancel")
        body = wait_done(c, pred["id"], timeout=2)
        assert (body["status"], body["output"]) == ("canceled", None)
        assert body["metrics"]["predict_time"] < 2
        assert len(engine.started) == 1  # the queued one never started generating


def test_list_is_paginated_newest_first(client):
    ids = [
        client.post(
            "/v1/predictions",
            headers={"Prefer": "wait"},
            json={"version": V1, "input": {"prompt": str(i), "duration": 1}},
        ).json()["id"]
        for i in range(5)
    ]
    page = client.get("/v1/predictions").json()
    seen = [p["id"] for p in page["results"]]
    assert page["previous"] is None
    while page["next"]:
        page = client.get(page["next"]).json()
        seen += [p["id"] for p in page["results"]]
    assert seen == ids[::-1]
    back = client.get(page["previous"]).json()
    assert [p["id"] for p in back["results"]] == ids[::-1][2:4]


def test_input_audio_from_uploaded_file_reaches_engine_as_local_path(client, fake_engine, tmp_path):
    up = client.post(
        "/v1/files", files={"content": ("melody.wav", b"RIFF....", "audio/wav")}, data={"metadata": '{"k": 1}'}
    )
    assert up.status_code == 201
    f = up.json()
    assert (f["name"], f["size"], f["content_type"], f["metadata"]) == ("melody.wav", 8, "audio/wav", {"k": 1})
    assert client.get(f["urls"]["get"]).json()["id"] == f["id"]
    assert client.get(f"/v1/files/{f['id']}/download").content == b"RIFF...."
    client.post(
        "/v1/predictions",
        headers={"Prefer": "wait"},
        json={"version": V1, "input": {"prompt": "x", "duration": 1, "input_audio": f["urls"]["get"]}},
    )
    local = fake_engine.requests[-1].input_audio
    assert local.endswith(f"/files/{f['id']}/melody.wav") and Path(local).read_bytes() == b"RIFF...."


def test_models_and_versions_serve_the_openapi_schema(client):
    model = client.get("/v1/models/meta/musicgen").json()
    assert model["latest_version"]["id"] == V1
    props = model["latest_version"]["openapi_schema"]["components"]["schemas"]["Input"]["properties"]
    assert props["duration"]["default"] == 8 and len(props) == 15
    assert client.get(f"/v1/models/meta/musicgen/versions/{V2}").json()["id"] == V2
    assert client.get("/v1/models/meta/musicgen/versions/nope").status_code == 404
    assert client.get("/v1/webhooks/default/secret").json()["key"].startswith("whsec_")
    assert client.get("/health-check").json()["status"] == "READY"


def test_data_uri_output_mode_inlines_the_file(tmp_path):
    """MUSICGEN_OUTPUT=data-uri: both clients wrap data: outputs as FileOutput, like Replicate's https URLs."""
    settings = Settings(data_dir=tmp_path / "data", output="data-uri")
    with TestClient(create_app(settings, FakeEngine())) as client:
        inputs = {"prompt": "x", "duration": 1, "model_version": "large"}
        body = client.post("/v1/predictions", headers={"Prefer": "wait"}, json={"version": V1, "input": inputs}).json()
        assert body["output"].startswith("data:audio/wav;base64,")
        served = client.get(f"/delivery/{body['id']}/out.wav").content
        assert base64.b64decode(body["output"].split(",", 1)[1]) == served
        assert client.get(f"/v1/predictions/{body['id']}").json()["output"] == body["output"]
        listed = client.get("/v1/predictions").json()["results"][0]  # a page of 100 would be 100 files
        assert listed["id"] == body["id"] and listed["output"] == f"http://testserver/delivery/{body['id']}/out.wav"


def test_an_engine_that_batches_gets_that_many_predictions_at_once_and_the_rest_queue(tmp_path):
    engine = FakeEngine(step_delay_s=0.01, concurrency=2)
    with make_client(tmp_path, engine) as c:
        ids = [
            c.post("/v1/predictions", json={"version": V1, "input": {"prompt": "x", "duration": d}}).json()["id"]
            for d in (20, 20, 1)
        ]

        def statuses() -> list[str]:
            return [c.get(f"/v1/predictions/{i}").json()["status"] for i in ids]

        deadline = time.monotonic() + 10
        while statuses()[:2] != ["processing", "processing"]:
            assert time.monotonic() < deadline
        assert statuses()[2] == "starting"  # two engine threads, both busy
        for pred_id in ids[:2]:
            c.post(f"/v1/predictions/{pred_id}/cancel")
        assert wait_done(c, ids[2], timeout=30)["status"] == "succeeded"
