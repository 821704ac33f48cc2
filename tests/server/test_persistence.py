"""A restart keeps finished predictions and their files; unfinished ones become failed, never stuck."""

from __future__ import annotations

import json
import sqlite3

from server_helpers import V1, make_client

from musicgen_local.server.prediction import Prediction


def test_restart_keeps_finished_predictions_and_fails_interrupted_ones(tmp_path):
    with make_client(tmp_path) as c:
        done = c.post("/v1/predictions", headers={"Prefer": "wait"},
                      json={"version": V1, "input": {"prompt": "x", "duration": 1}}).json()
        audio = c.get(done["output"]).content
    # A prediction that was mid-generation when the process died, as the store last wrote it.
    running = Prediction(id="r" * 26, version=V1, input={"prompt": "y"}, status="processing", logs="Using seed 3\n")
    db = sqlite3.connect(tmp_path / "data" / "musicgen.sqlite3")
    db.execute("INSERT INTO predictions VALUES (?, ?, ?)",
               (running.id, running.created_at.isoformat(), json.dumps(running.to_record())))
    db.commit()
    db.close()

    with make_client(tmp_path) as c:
        again = c.get(f"/v1/predictions/{done['id']}").json()
        assert {k: again[k] for k in ("status", "output", "logs")} == {k: done[k] for k in ("status", "output", "logs")}
        assert c.get(again["output"]).content == audio
        stuck = c.get(f"/v1/predictions/{running.id}").json()
        assert stuck["status"] == "failed"
        assert stuck["error"] == ("The server stopped while this prediction was running, so it did not finish. "
                                  "Create the prediction again.")
        assert [p["id"] for p in c.get("/v1/predictions").json()["results"]] == [running.id, done["id"]]
