"""`urls.stream`: Server-Sent Events as Replicate serves them, on the fake engine (one segment per
second of audio), through a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import threading
import time

import httpx
from sse_helpers import SSE, V1, events, live, parse

from musicgen_local.testing.fake_engine import FakeEngine

NAMES = {"output", "logs", "error", "done"}


def check_shape(seen) -> None:
    """Replicate's four names only, each with an id, numbered in order, ending with one `done`."""
    assert {e.event for e in seen} <= NAMES
    assert [e.id for e in seen] == [str(i) for i in range(int(seen[0].id), int(seen[0].id) + len(seen))]
    assert seen[-1].event == "done" and [e.event for e in seen].count("done") == 1


def test_a_prediction_streams_its_segments_logs_and_done(tmp_path):
    with live(tmp_path) as srv:
        pred = srv.create(duration=3, seed=5, stream=True)  # the clients still send `stream: true`
        assert pred["urls"]["stream"] == f"{srv.url}/v1/files/streams/{pred['id']}"
        seen = events(srv.http, pred["urls"]["stream"])
        check_shape(seen)
        assert (seen[0].id, seen[0].event, seen[0].data) == ("1", "logs", "Using seed 5")
        outputs = [e.data for e in seen if e.event == "output"]
        assert outputs == [f"{srv.url}/delivery/{pred['id']}/stream/{i:05d}.wav" for i in range(3)]
        assert any("100%" in e.data for e in seen if e.event == "logs")  # the progress lines, as in `logs`
        assert json.loads(seen[-1].data) == {}
        segment = httpx.get(outputs[1])  # no token needed, like /delivery outputs
        assert segment.headers["content-type"] == "audio/wav" and segment.content[:4] == b"RIFF"
        final = srv.wait(pred["id"])
        assert final["output"] == f"{srv.url}/delivery/{pred['id']}/out.wav"  # the final output is unchanged
        assert final["urls"]["stream"] == pred["urls"]["stream"]


def test_a_stream_opened_mid_run_carries_each_line_of_logs_once(tmp_path):
    """Every line of the prediction's `logs` (engine lines, progress lines), once each and in order, whether it was
    logged before the stream was opened or after (fails when a line reaches the stream twice)."""
    with live(tmp_path, FakeEngine(step_delay_s=0.01)) as srv:
        pred = srv.create(duration=3)
        while "%" not in srv.http.get(pred["urls"]["get"]).json()["logs"]:
            time.sleep(0.01)
        seen = events(srv.http, pred["urls"]["stream"])
        final = srv.wait(pred["id"])
    assert [e.data for e in seen if e.event == "logs"] == final["logs"].splitlines()


def test_a_finished_prediction_replays_whole_and_resumes_after_last_event_id(tmp_path):
    with live(tmp_path, FakeEngine(step_delay_s=0.005)) as srv:
        pred = srv.create(duration=3)
        url = pred["urls"]["stream"]
        first = events(srv.http, url, limit=3)  # disconnect mid-way
        rest = events(srv.http, url, **{"Last-Event-ID": first[-1].id})
        srv.wait(pred["id"])
        replay = events(srv.http, url)
        assert first + rest == replay  # nothing missed, nothing twice, the same ids
        check_shape(replay)
        assert events(srv.http, url, **{"Last-Event-ID": replay[-4].id}) == replay[-3:]
        # the client saw `done`: 204, which tells an EventSource not to reconnect
        resp = srv.http.get(url, headers={**SSE, "Last-Event-ID": replay[-1].id})
        assert resp.status_code == 204


def test_many_followers_see_the_same_events(tmp_path):
    with live(tmp_path, FakeEngine(step_delay_s=0.005)) as srv:
        pred = srv.create(duration=3)
        results = [None] * 8

        def follow(i: int) -> None:
            results[i] = events(srv.http, pred["urls"]["stream"])

        threads = [threading.Thread(target=follow, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        assert all(r == results[0] for r in results) and results[0][-1].event == "done"
        assert len([e for e in results[0] if e.event == "output"]) == 3


def test_canceled_and_failed_predictions_end_their_streams(tmp_path):
    with live(tmp_path, FakeEngine(step_delay_s=0.02)) as srv:
        running = srv.create(duration=30)
        seen = []
        for event in _iter_events(srv, running["urls"]["stream"]):
            seen.append(event)
            if event.event == "output":
                srv.http.post(running["urls"]["cancel"])
        assert (seen[-1].event, json.loads(seen[-1].data)) == ("done", {"reason": "canceled"})
        assert "error" not in {e.event for e in seen}

        failed = srv.create(prompt=None)  # the engine fails it: neither prompt nor input_audio
        seen = events(srv.http, failed["urls"]["stream"])
        check_shape(seen)
        assert [(e.event, e.data) for e in seen[-2:]] == [
            ("error", "Must provide either prompt or input_audio"),
            ("done", '{"reason": "error"}'),
        ]


def test_a_prediction_canceled_before_it_started_ends_its_stream(tmp_path):
    engine = FakeEngine(step_delay_s=0.02)
    engine.capacity = 1  # the second prediction waits in the server's queue
    with live(tmp_path, engine) as srv:
        first, queued = srv.create(duration=30), srv.create(duration=1)
        result = []
        follower = threading.Thread(target=lambda: result.append(events(srv.http, queued["urls"]["stream"])))
        follower.start()
        time.sleep(0.3)
        srv.http.post(queued["urls"]["cancel"])
        follower.join(timeout=5)
        assert (result[0][-1].event, result[0][-1].data) == ("done", '{"reason": "canceled"}')
        srv.http.post(first["urls"]["cancel"])


def test_a_prediction_canceled_while_waiting_for_the_engine_leaves_no_log_in_memory(tmp_path):
    engine = FakeEngine(step_delay_s=0.01, concurrency=1)  # both reach the engine; the second waits for a slot
    with live(tmp_path, engine) as srv:
        first, second = srv.create(duration=2), srv.create(duration=1)
        deadline = time.monotonic() + 5
        while srv.app.state.streams.stats()["live_logs"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # until the second's first event (its seed) reached the streams
        srv.http.post(second["urls"]["cancel"])  # ended at once; what its run says later is dropped
        srv.wait(first["id"])  # the status is saved before the listeners see the last event: give them a moment
        deadline = time.monotonic() + 5
        while srv.app.state.streams.stats()["live_logs"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv.app.state.streams.stats()["live_logs"] == 0
        seen = events(srv.http, second["urls"]["stream"])
        assert [(e.event, e.data) for e in seen] == [
            ("logs", "Using seed " + seen[0].data.split()[-1]),
            ("done", '{"reason": "canceled"}'),
        ]


def test_unknown_ids_are_404_and_other_media_406(tmp_path):
    with live(tmp_path) as srv:
        assert srv.http.get(f"{srv.url}/v1/files/streams/nosuchprediction", headers=SSE).status_code == 404
        pred = srv.create(duration=1)
        assert srv.http.get(pred["urls"]["stream"], headers={"Accept": "application/json"}).status_code == 406
        assert httpx.get(f"{srv.url}/delivery/{pred['id']}/stream/99999.wav").status_code == 404


def test_the_stream_needs_the_token_or_the_urls_signature(tmp_path):
    with live(tmp_path, api_token="secret") as srv:
        pred = srv.create(duration=1)
        url = pred["urls"]["stream"]
        plain, _, sig = url.partition("?sig=")
        assert sig
        assert httpx.get(plain, headers=SSE).status_code == 401
        assert httpx.get(f"{plain}?sig={'0' * 32}", headers=SSE).status_code == 401
        assert httpx.get(f"{srv.url}/v1/files/streams/nosuch", headers=SSE).status_code == 401
        assert events(httpx.Client(), url)[-1].event == "done"  # the URL as given: what EventSource and npm do
        assert events(srv.http, plain)[-1].event == "done"  # or the bearer token


def test_accept_event_stream_on_create_streams_from_creation(tmp_path):
    with live(tmp_path) as srv:
        body = {"version": V1, "input": {"prompt": "x", "duration": 2}, "stream": True}
        with srv.http.stream("POST", f"{srv.url}/v1/predictions", json=body, headers=SSE) as resp:
            assert resp.status_code == 201
            assert resp.headers["content-type"].startswith("text/event-stream")
            pred_url = resp.headers["location"]
            seen = [e for e in parse(resp.iter_lines()) if e.event]
        check_shape(seen)
        assert seen[0].id == "1" and len([e for e in seen if e.event == "output"]) == 2
        assert srv.http.get(pred_url).json()["status"] == "succeeded"


def test_data_uri_mode_streams_segments_inline(tmp_path):
    with live(tmp_path, output="data-uri") as srv:
        pred = srv.create(duration=1)
        outputs = [e.data for e in events(srv.http, pred["urls"]["stream"]) if e.event == "output"]
        assert len(outputs) == 1 and outputs[0].startswith("data:audio/wav;base64,")
        assert base64.b64decode(outputs[0].split(",", 1)[1])[:4] == b"RIFF"


def test_fifty_clients_that_disconnect_leave_nothing_behind(tmp_path):
    with live(tmp_path, FakeEngine(step_delay_s=0.02), ping_s=0.1) as srv:
        pred = srv.create(duration=30)
        first = events(srv.http, pred["urls"]["stream"], limit=1)
        threads, hub = threading.active_count(), srv.app.state.streams
        for _ in range(50):
            assert events(srv.http, pred["urls"]["stream"], limit=1) == first
        deadline = time.monotonic() + 5
        while hub.stats()["followers"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hub.stats() == {"followers": 0, "waiting": 0, "live_logs": 1}
        assert threading.active_count() == threads
        srv.http.post(pred["urls"]["cancel"])
        srv.wait(pred["id"])
        deadline = time.monotonic() + 5
        while hub.stats()["live_logs"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hub.stats() == {"followers": 0, "waiting": 0, "live_logs": 0}  # an ended prediction's log is a file now


def test_a_quiet_stream_sends_keep_alive_comments(tmp_path):
    engine = FakeEngine(step_delay_s=0.02, ready=False)  # holds the prediction before it starts
    with live(tmp_path, engine, ping_s=0.1) as srv:
        pred = srv.create(duration=1)
        with srv.http.stream("GET", pred["urls"]["stream"], headers=SSE) as resp:
            lines = resp.iter_lines()
            seen = [next(lines) for _ in range(8)]
        engine.ready.set()
        assert ": keep-alive" in seen


def _iter_events(srv, url):
    with srv.http.stream("GET", url, headers=SSE) as resp:
        for event in parse(resp.iter_lines()):
            if event.event:
                yield event
