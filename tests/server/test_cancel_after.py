"""`Cancel-After`: a prediction still queued or running at its deadline ends `canceled`, as a POST .../cancel
would leave it; a bad header is a 422 before anything is queued."""

from __future__ import annotations

import time

import pytest
from server_helpers import V1, make_client, wait_done

from musicgen_local.server.deadlines import Deadlines
from musicgen_local.server.params import cancel_after_seconds
from musicgen_local.testing.fake_engine import FakeEngine

MALFORMED = ("duration_parsing", "Input should be a duration such as 30s, 5m, 1h30m or 90 (seconds)")
TOO_SHORT = ("greater_than_equal", "Input should be greater than or equal to 5 seconds")


@pytest.mark.parametrize(
    "header, seconds", [("30s", 30), ("5m", 300), ("1h30m", 5400), ("2m30s", 150), ("90", 90), ("5", 5), ("1.5h", 5400)]
)
def test_durations_parse_to_seconds(header, seconds):
    assert cancel_after_seconds(header) == seconds


@pytest.mark.parametrize(
    "header, error",
    [
        ("4s", TOO_SHORT),
        ("4.9", TOO_SHORT),
        ("0", TOO_SHORT),
        ("soon", MALFORMED),
        ("", MALFORMED),
        ("5 m", MALFORMED),
        ("1h30", MALFORMED),
        ("-10s", MALFORMED),
        ("10S", MALFORMED),
        ("m", MALFORMED),
    ],
)
def test_bad_cancel_after_is_422_naming_the_header_and_queues_nothing(client, fake_engine, header, error):
    kind, message = error
    for path, body in (
        ("/v1/predictions", {"version": V1, "input": {"prompt": "x"}}),
        ("/v1/models/meta/musicgen/predictions", {"input": {"prompt": "x"}}),
    ):
        resp = client.post(path, headers={"Cancel-After": header}, json=body)
        assert resp.status_code == 422
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json() == {
            "title": "Input validation failed",
            "status": 422,
            "detail": f"- header.Cancel-After: {message}",
            "invalid_fields": [{"field": "header.Cancel-After", "type": kind, "description": message}],
        }
    assert client.get("/v1/predictions").json()["results"] == [] and fake_engine.requests == []


@pytest.mark.slow
def test_deadline_cancels_queued_and_running_predictions_and_spares_finished_ones(tmp_path, receiver):
    engine = FakeEngine(step_delay_s=0.01)  # 1 s of audio takes 0.5 s, 30 s take 15 s
    with make_client(tmp_path, engine, webhook_backoff_s=0.05) as c:
        finished = c.post(
            "/v1/predictions",
            headers={"Prefer": "wait", "Cancel-After": "5s"},
            json={"version": V1, "input": {"prompt": "a", "duration": 1}},
        ).json()
        assert finished["status"] == "succeeded"
        running = c.post(
            "/v1/models/meta/musicgen/predictions",
            headers={"Cancel-After": "6s"},
            json={
                "input": {"prompt": "b", "duration": 30},
                "webhook": receiver.url,
                "webhook_events_filter": ["completed"],
            },
        ).json()
        # Queued behind `running`, and due first: the wait ends at the deadline, not after 10 s.
        queued = c.post(
            "/v1/predictions",
            headers={"Prefer": "wait=10", "Cancel-After": "5"},
            json={"version": V1, "input": {"prompt": "c", "duration": 1}},
        )
        assert queued.status_code == 201
        body = queued.json()
        assert (body["status"], body["started_at"], body["output"]) == ("canceled", None, None)
        assert 5 <= body["metrics"]["total_time"] < 6

        body = wait_done(c, running["id"])
        assert (body["status"], body["output"], body["error"]) == ("canceled", None, None)
        assert body["started_at"] is not None and 6 <= body["metrics"]["total_time"] < 9
        receiver.wait_for(lambda evs: len(evs) >= 1)
        c.app.state.runs["prediction"].webhooks.drain()
        assert [(e["id"], e["status"]) for e in receiver.events()] == [(running["id"], "canceled")]

        assert c.get(f"/v1/predictions/{finished['id']}").json()["status"] == "succeeded"  # its deadline passed too
        assert [r.prompt for r in engine.started] == ["a", "b"]  # the queued one never started generating


def test_deadlines_fire_in_time_order_survive_a_failing_cancel_and_stop_promptly():
    fired: list[str] = []

    def cancel(pred_id: str) -> None:
        fired.append(pred_id)
        if pred_id == "boom":
            raise RuntimeError("a bug in cancel")

    deadlines = Deadlines(cancel)
    deadlines.start()
    deadlines.add("late", 0.4)
    deadlines.add("never", 3600)
    deadlines.add("boom", 0.1)  # added last, due first: the sleeping thread must wake for it
    deadlines.add("early", 0.2)
    deadline = time.monotonic() + 5
    while len(fired) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fired == ["boom", "early", "late"]
    started = time.monotonic()
    deadlines.stop()
    assert time.monotonic() - started < 1
