"""MUSICGEN_LOG_FORMAT=json: every line the server writes is one JSON object; a prediction's lines carry its id
and model."""

from __future__ import annotations

import json
from pathlib import Path


def test_json_logs_are_one_object_per_line_with_the_prediction(processes):
    server = processes(env={"MUSICGEN_LOG_FORMAT": "json"})
    pred_id = server.create("json logs", 1).json()["id"]
    server.wait_for(pred_id, ("succeeded",))
    server.stop()
    lines = [json.loads(line) for line in Path(server.log.name).read_text().splitlines() if line.strip()]
    assert lines and all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    about = [line for line in lines if line.get("prediction_id") == pred_id]
    assert any(line["message"] == f"prediction {pred_id}: succeeded" for line in about)
    assert {line["model"] for line in about} == {"stereo-melody-large"}
    assert any(line["logger"] == "uvicorn.access" and "POST /v1/predictions" in line["message"] for line in lines)
