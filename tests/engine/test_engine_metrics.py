"""The engine's series in GET /metrics, from the tiny real engine: decode steps and frames, batch rows, loads."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from musicgen_local.registry import PUBLISHED
from musicgen_local.server import create_app
from musicgen_local.settings import Settings


def test_decode_steps_frames_and_batch_rows_are_exported(engine, tmp_path):
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"), engine)) as c:
        before = _engine_series(c)
        for seed in (1, 2):
            created = c.post(
                "/v1/predictions",
                headers={"Prefer": "wait"},
                json={
                    "version": PUBLISHED[0],
                    "input": {"prompt": "x", "duration": 1, "model_version": "large", "seed": seed},
                },
            ).json()
            assert created["status"] == "succeeded"
        after = _engine_series(c)
    key = ("cpu", "large")
    steps = after["musicgen_engine_decode_steps_total"][key] - before.get("musicgen_engine_decode_steps_total", {}).get(
        key, 0
    )
    frames = after["musicgen_engine_frames_total"][key] - before.get("musicgen_engine_frames_total", {}).get(key, 0)
    assert steps >= 2 * 50 - 2 and frames == steps  # 50 frames a second; one row at a time here
    assert after["musicgen_engine_batch_rows_allocated"][key] >= 1
    assert after["musicgen_engine_batch_rows_in_use"][key] == 0  # nothing decoding once both are done
    assert after["musicgen_engine_model_loads_total"][("cpu",)] >= 1


def _engine_series(c) -> dict[str, dict[tuple, float]]:
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(c.get("/metrics").text):
        for s in family.samples:
            if s.name.startswith("musicgen_engine_"):
                assert s.labels.get("replica", "local") == "local"  # the engine in this process
                out.setdefault(s.name, {})[tuple(s.labels[k] for k in ("device", "model_version") if k in s.labels)] = (
                    s.value
                )
    return out
