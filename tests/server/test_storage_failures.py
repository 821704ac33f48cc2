"""When the disk or the database refuses a write, the client is told so (507 when the disk is full, 503 with
Retry-After for another refusal, such as a database another program holds), nothing half-written is kept, and
nothing is counted against the queue."""

from __future__ import annotations

import resource
from contextlib import contextmanager

from server_helpers import V1, make_client, wait_done

FULL = "Could not store the {what}: the server's disk is full. Nothing was kept; try again later."


@contextmanager
def disk_full_past(size: int):
    """Writes past `size` bytes of any file fail as on a full disk (EFBIG; Python ignores SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def _create(c, prompt: str = "x"):
    return c.post("/v1/predictions", json={"version": V1, "input": {"prompt": prompt, "duration": 1}})


def test_an_upload_onto_a_full_disk_is_a_507_and_leaves_nothing_behind(tmp_path):
    with make_client(tmp_path) as c:
        with disk_full_past(256 * 1024):
            refused = c.post("/v1/files", files={"content": ("big.wav", b"\0" * 900_000, "audio/wav")})
        assert refused.status_code == 507 and refused.json()["detail"] == FULL.format(what="upload")
        assert not any((tmp_path / "data" / "files").glob("*/*"))
        kept = c.post("/v1/files", files={"content": ("big.wav", b"\0" * 900_000, "audio/wav")})
        assert kept.status_code == 201 and kept.json()["size"] == 900_000


def test_a_create_the_disk_refuses_is_a_503_and_takes_no_queue_slot(tmp_path):
    """SQLite reports a write past the file size limit as an I/O error (a disk out of space is SQLITE_FULL, a 507
    like the upload's): either way the client is told, and the slot it would have taken stays free."""
    with make_client(tmp_path, settings={"max_queue": 1}) as c:
        with disk_full_past(1024):  # no page of the database, its journal or its WAL fits
            refused = [_create(c) for _ in range(3)]
        assert [(r.status_code, r.headers.get("retry-after")) for r in refused] == [(503, "10")] * 3
        assert refused[0].json()["detail"] == (
            "Could not store the prediction: its storage refused the write (disk "
            "I/O error). Nothing was kept; try again later."
        )
        created = _create(c, "after")
        assert created.status_code == 201
        assert wait_done(c, created.json()["id"])["status"] == "succeeded"
        assert [p["id"] for p in c.get("/v1/predictions").json()["results"]] == [created.json()["id"]]


def test_a_disk_that_fills_during_generation_ends_the_prediction_once_and_frees_its_slot(tmp_path, receiver):
    """Before, the prediction failed but could not be written as failed: it stayed unfinished (its queue slot taken,
    every later create a 429), no `completed` webhook went out, and after a restart it ran again and succeeded."""
    from musicgen_local.testing.fake_engine import FakeEngine

    body = {"version": V1, "input": {"prompt": "x", "duration": 1}, "webhook": receiver.url}
    with make_client(tmp_path, FakeEngine(step_delay_s=0.02), settings={"max_queue": 1}) as c:
        pred = c.post("/v1/predictions", json={**body, "webhook_events_filter": ["completed"]}).json()
        while c.get(f"/v1/predictions/{pred['id']}").json()["status"] != "processing":
            pass
        with disk_full_past(1024):  # neither the output file nor the database's next page fits
            ended = wait_done(c, pred["id"])
            assert ended["status"] == "failed" and ended["error"] == FULL.format(what="output")
            receiver.wait_for(lambda events: len(events) == 1)
        assert [(e["id"], e["status"]) for e in receiver.events()] == [(pred["id"], "failed")]
        again = _create(c, "after")  # the slot is free (MUSICGEN_MAX_QUEUE 1)
        assert again.status_code == 201 and wait_done(c, again.json()["id"])["status"] == "succeeded"
        for _ in range(200):  # the failed state, owed to the database, is written once there is room
            if not c.app.state.runs["prediction"].store.flush():
                break
    with make_client(tmp_path) as c:  # a restart: it ended failed, and stays so (it is not run again)
        assert c.get(f"/v1/predictions/{pred['id']}").json()["status"] == "failed"
    assert len(receiver.events()) == 1
