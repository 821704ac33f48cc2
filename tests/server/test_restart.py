"""Nothing is lost across a restart: finished predictions keep their files; what was queued or running
when the process died runs after the restart, in order, and sends its `completed` webhook; SIGTERM
drains (creates answer 503, running predictions finish, queued ones wait for the next start)."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from fake_server import DIE_WHILE_STARTING, LOSE_THE_DEVICE
from server_helpers import V1, Receiver, make_client, wait_done

from musicgen_local.server.dispatcher import INTERRUPTED_TWICE
from musicgen_local.server.prediction import Prediction


def _store_as_a_crash_left_it(data_dir: Path, *preds: Prediction) -> None:
    db = sqlite3.connect(data_dir / "musicgen.sqlite3")
    for pred in preds:
        db.execute(
            "INSERT INTO predictions VALUES (?, ?, ?)",
            (pred.id, pred.created_at.isoformat(), json.dumps(pred.to_record())),
        )
    db.commit()
    db.close()


def _request(prompt: str, seed: int) -> dict:
    return {"model_version": "large", "prompt": prompt, "duration": 1, "seed": seed}


def test_finished_predictions_and_their_files_survive_a_restart(tmp_path):
    with make_client(tmp_path) as c:
        done = c.post(
            "/v1/predictions", headers={"Prefer": "wait"}, json={"version": V1, "input": {"prompt": "x", "duration": 1}}
        ).json()
        audio = c.get(done["output"]).content
    with make_client(tmp_path) as c:
        again = c.get(f"/v1/predictions/{done['id']}").json()
        assert {k: again[k] for k in ("status", "output", "logs")} == {k: done[k] for k in ("status", "output", "logs")}
        assert c.get(again["output"]).content == audio


def test_what_a_crash_interrupted_runs_after_the_restart_in_order(tmp_path, receiver):
    with make_client(tmp_path):  # creates the store
        pass
    running = Prediction(
        id="r" * 26,
        version=V1,
        input={"prompt": "a"},
        status="processing",
        attempts=1,
        logs="Using seed 3\n",
        request=_request("a", 3),
        webhook=receiver.url,
    )
    queued = [
        Prediction(
            id=c * 26,
            version=V1,
            input={"prompt": c},
            request=_request(c, 4),
            webhook=receiver.url,
            webhook_events_filter=("completed",),
        )
        for c in "bc"
    ]
    twice = Prediction(
        id="t" * 26,
        version=V1,
        input={"prompt": "t"},
        status="processing",
        attempts=2,
        request=_request("t", 5),
        webhook=receiver.url,
        webhook_events_filter=("completed",),
    )
    _store_as_a_crash_left_it(tmp_path / "data", running, *queued, twice)

    with make_client(tmp_path) as c:
        finished = [wait_done(c, p.id) for p in (running, *queued, twice)]
        receiver.wait_for(lambda evs: len([e for e in evs if e["status"] in ("succeeded", "failed")]) == 4)
        engine_order = [r.prompt for r in c.app.state.engine.started]

    assert [p["status"] for p in finished] == ["succeeded", "succeeded", "succeeded", "failed"]
    assert engine_order == ["a", "b", "c"]  # oldest first; the one interrupted twice is not run again
    assert "running it again" in finished[0]["logs"] and finished[0]["logs"].count("Using seed 3") == 2
    assert finished[3]["error"] == INTERRUPTED_TWICE
    completed = {e["id"]: e["status"] for e in receiver.events() if e["status"] in ("succeeded", "failed")}
    assert completed == {
        running.id: "succeeded",
        queued[0].id: "succeeded",
        queued[1].id: "succeeded",
        twice.id: "failed",
    }


def test_kill_9_loses_no_prediction_and_no_completed_webhook(processes):
    hook = Receiver()
    try:
        server = processes(step_delay_s=0.02)
        ids = [server.create(f"p{i}", 2, hook.url).json()["id"] for i in range(6)]  # 2 s of audio = 2 s each
        server.wait_for(ids[0], ("processing",))
        server.proc.send_signal(signal.SIGKILL)  # no chance to clean up or drain
        server.proc.wait(timeout=10)

        again = processes(step_delay_s=0.0)
        assert [again.wait_for(i, ("succeeded", "failed", "canceled"))["status"] for i in ids] == ["succeeded"] * 6
        hook.wait_for(lambda evs: len(evs) >= 6)
        assert sorted(e["id"] for e in hook.events()) == sorted(ids)
    finally:
        hook.server.shutdown()


def test_sigterm_drains_then_the_next_start_runs_what_was_left(processes):
    server = processes(grace_s=20, step_delay_s=0.02)
    running = server.create("running", 2).json()["id"]  # 100 steps at 20 ms: done within the grace
    queued = server.create("queued", 1).json()["id"]
    server.wait_for(running, ("processing",))
    server.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while (refused := server.create("late", 1)).status_code != 503:  # draining: no new predictions
        assert time.monotonic() < deadline, refused.text
    assert "shutting down" in refused.json()["detail"]
    assert httpx.get(f"{server.url}/health-check").json()["status"] == "DRAINING"
    assert server.get(queued)["status"] == "starting"  # reads still work
    assert server.proc.wait(timeout=30) == 0  # it stopped by itself once the running one was done

    again = processes(step_delay_s=0.0)
    assert again.get(running)["status"] == "succeeded" and again.get(running)["output"]
    assert again.wait_for(queued, ("succeeded",))["status"] == "succeeded"  # left queued, run now


def test_sigterm_refuses_training_creates_too_and_the_next_start_resumes_the_training(processes):
    """Every kind of run drains alike: a training create during a drain is refused as a prediction create is, and a
    training that was running is kept for the next start (it resumes there from its checkpoint)."""
    server = processes(grace_s=20, step_delay_s=0.5)
    running = server.create("running", 2).json()["id"]  # holds the drain open for a few seconds
    training = server.train("alice/first").json()["id"]
    server.wait_for(running, ("processing",))
    server.wait_for(training, ("processing",), kind="trainings")
    server.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while (refused := server.train("alice/second")).status_code != 503:
        assert time.monotonic() < deadline, refused.text
    assert "create the training again" in refused.json()["detail"]
    assert server.create("late", 1).status_code == 503
    assert server.proc.wait(timeout=60) == 0

    again = processes(step_delay_s=0.0)
    assert again.wait_for(training, ("succeeded",), kind="trainings")["output"]["version"].startswith("alice/first:")


@pytest.mark.parametrize("signals", [1, 2], ids=["drained", "second-signal"])
def test_two_graceful_restarts_do_not_count_toward_the_crash_loop_limit(processes, signals):
    """Two SIGTERMs (a deploy, twice) ended a training `failed` with "The server stopped twice while this training
    was running" (issue 31, item 6). A drain that stops a training at its checkpoint, or a prediction still
    generating at the grace's end, did not crash: each runs again, a third time and more, while two kill -9s still
    end a run that kills its server (test_a_prediction_that_kills_the_server_while_starting_fails_at_the_second_...).
    With a second signal, the drain stops at once, its grace not over.
    """
    grace = 1 if signals == 1 else 600
    server = processes(grace_s=grace, step_delay_s=0.5)
    prediction = server.create("long", 4).json()["id"]  # 200 steps at 0.5 s: still generating at the grace's end
    training = server.train("alice/deployed").json()["id"]
    for restart in range(2):
        server.wait_for(prediction, ("processing",))
        server.wait_for(training, ("processing",), kind="trainings")
        server.proc.send_signal(signal.SIGTERM)
        if signals == 2:
            deadline = time.monotonic() + 10
            while server.create("late", 1).status_code != 503:  # draining
                assert time.monotonic() < deadline
            server.proc.send_signal(signal.SIGTERM)  # uvicorn raises it again once it has shut down
        assert server.proc.wait(timeout=60) == (0 if signals == 1 else -signal.SIGTERM)
        server = processes(grace_s=grace, step_delay_s=0.5 if restart == 0 else 0.0)

    predicted = server.wait_for(prediction, ("succeeded", "failed", "canceled"))
    trained = server.wait_for(training, ("succeeded", "failed", "canceled"), kind="trainings")
    assert [(run["status"], run["error"]) for run in (predicted, trained)] == [("succeeded", None)] * 2
    assert trained["logs"].count("resuming from its last checkpoint") == 2


def test_a_lost_device_drains_training_webhooks_before_the_exit(processes):
    """A lost device ends the process (status 3), after the webhooks of every kind were given their chance: the
    `completed` of a training that had just finished, still waiting for its slow receiver's answer, is delivered by
    the exiting process, not left owed to the next start (which would send it a second time)."""
    from musicgen_local.server import EXIT_DEVICE_LOST

    hook = Receiver(delay_s=2.0)
    try:
        server = processes(step_delay_s=0.0)
        training = server.train("alice/sound", hook.url).json()["id"]
        server.wait_for(training, ("succeeded",), kind="trainings")
        server.create(LOSE_THE_DEVICE, 1)
        assert server.proc.wait(timeout=60) == EXIT_DEVICE_LOST
        assert [e["id"] for e in hook.events()] == [training]
        db = sqlite3.connect(server.data_dir / "musicgen.sqlite3")
        assert db.execute("SELECT run_id FROM webhooks").fetchall() == []  # nothing owed to a restart
        db.close()
    finally:
        hook.close()


def test_a_prediction_that_kills_the_server_while_starting_fails_at_the_second_restart(processes):
    """No crash loop: an input that kills the process before it generates is not run a third time."""
    server = processes()
    deadly = server.create(DIE_WHILE_STARTING, 1).json()["id"]
    assert server.proc.wait(timeout=30) == -signal.SIGKILL
    again = processes(ready=False)  # runs it once more (a crash may have had another cause): killed again
    assert again.proc.wait(timeout=30) == -signal.SIGKILL

    third = processes()
    ended = third.wait_for(deadly, ("failed", "succeeded", "canceled"))
    assert (ended["status"], ended["error"]) == ("failed", INTERRUPTED_TWICE)
    other = third.create("fine", 1).json()["id"]
    assert third.wait_for(other, ("succeeded", "failed"))["status"] == "succeeded"
    assert third.proc.poll() is None


@pytest.mark.slow
def test_cancel_after_survives_a_kill_and_restart(processes):
    """A deadline set before the crash still cancels after the restart (the re-run would otherwise go on)."""
    server = processes(step_delay_s=0.05)
    body = {"version": V1, "input": {"prompt": "long", "duration": 30}}  # 1500 steps at 50 ms: 75 s
    pred = httpx.post(f"{server.url}/v1/predictions", json=body, headers={"Cancel-After": "6s"}, timeout=10).json()
    server.wait_for(pred["id"], ("processing",))
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=10)

    again = processes(step_delay_s=0.05)
    ended = again.wait_for(pred["id"], ("succeeded", "failed", "canceled"), timeout=30)
    assert ended["status"] == "canceled"
    assert "running it again" in ended["logs"]  # it was re-run, and the deadline stopped the re-run


def test_a_completed_webhook_still_being_retried_is_delivered_after_kill_9(processes):
    """The receiver answers 503 while the first server runs; after kill -9 and a restart it answers 200 and gets
    each `completed`, with the webhook-id it was first sent with."""
    hook = Receiver(fail_first=10**6)
    try:
        server = processes()
        ids = [server.create(f"p{i}", 1, hook.url).json()["id"] for i in range(3)]
        for pred_id in ids:
            server.wait_for(pred_id, ("succeeded",))
        hook.wait_for(lambda evs: {e["id"] for e in evs} == set(ids))  # each tried, and refused
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=10)
        first_ids = {json.loads(body)["id"]: headers["webhook-id"] for headers, body in hook.calls}
        hook.fail_first, before = 0, len(hook.calls)
        processes()
        hook.wait_for(lambda evs: {e["id"] for e in evs[before:]} == set(ids))
        resent = {json.loads(body)["id"]: headers["webhook-id"] for headers, body in hook.calls[before:]}
        assert resent == first_ids and all(e["status"] == "succeeded" for e in hook.events()[before:])
    finally:
        hook.close()
