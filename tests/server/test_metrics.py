"""GET /metrics: Prometheus' text format, whose counters equal what was done."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_helpers import V1, Receiver, make_client, wait_done

from musicgen_local.testing.fake_engine import FakeEngine


def scrape(client, **kwargs) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    resp = client.get("/metrics", **kwargs)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def created(model_version: str, version: str = V1) -> tuple:
    return (("model_version", model_version), ("version", version))


def ended(model_version: str, status: str, version: str = V1) -> tuple:
    return (("model_version", model_version), ("status", status), ("version", version))


def _create(c, **input) -> str:
    return c.post("/v1/predictions", json={"version": V1, "input": {"prompt": "x", **input}}).json()["id"]


def test_counters_equal_what_was_done(tmp_path):
    hook = Receiver()
    try:
        with make_client(tmp_path, FakeEngine(step_delay_s=0.01, concurrency=8)) as c:
            done = [_create(c, duration=1, model_version="large") for _ in range(3)]
            long = [_create(c, duration=60) for _ in range(2)]
            failed = _create(c, continuation=True)  # no input_audio to continue: a failed prediction
            hooked = c.post(
                "/v1/predictions",
                json={
                    "version": V1,
                    "input": {"prompt": "x", "duration": 1},
                    "webhook": hook.url,
                    "webhook_events_filter": ["completed"],
                },
            )
            for pred_id in long:
                c.post(f"/v1/predictions/{pred_id}/cancel")
            for pred_id in [*done, *long, failed, hooked.json()["id"]]:
                wait_done(c, pred_id)
            hook.wait_for(lambda evs: len(evs) == 1)
            c.post("/v1/files", files={"content": ("a.wav", b"\0" * 1000, "audio/wav")})
            c.app.state.runs["prediction"].webhooks.drain()
            got = scrape(c)
    finally:
        hook.close()
    large, default = (("model_version", "large"),), (("model_version", "stereo-melody-large"),)
    assert got[("musicgen_predictions_created_total", created("large"))] == 3
    assert got[("musicgen_predictions_created_total", created("stereo-melody-large"))] == 4
    assert got[("musicgen_predictions_ended_total", ended("large", "succeeded"))] == 3
    assert got[("musicgen_predictions_ended_total", ended("stereo-melody-large", "canceled"))] == 2
    assert got[("musicgen_predictions_ended_total", ended("stereo-melody-large", "failed"))] == 1
    assert got[("musicgen_predictions_ended_total", ended("stereo-melody-large", "succeeded"))] == 1
    assert got[("musicgen_prediction_predict_seconds_count", large)] == 3  # successes only
    assert got[("musicgen_prediction_realtime_factor_count", large)] == 3  # and their work per second of audio
    assert got[("musicgen_prediction_queued_seconds_count", default)] == 3  # the failed one never started
    assert got[("musicgen_predictions_queued", ())] == 0 and got[("musicgen_predictions_unfinished", ())] == 0
    assert got[("musicgen_webhooks_total", (("kind", "prediction"), ("outcome", "sent")))] == 1
    assert got[("musicgen_upload_bytes_total", ())] == 1000
    assert got[("musicgen_engine_ready", ())] == 1


def test_metrics_need_the_token_when_one_is_set(tmp_path):
    with make_client(tmp_path, api_token="secret") as c:
        assert c.get("/metrics").status_code == 401
        assert scrape(c, headers={"Authorization": "Bearer secret"})[("musicgen_predictions_queued", ())] == 0


@pytest.mark.slow
def test_a_scrape_during_a_burst_of_300_loses_nothing(tmp_path):
    with make_client(tmp_path, FakeEngine(step_delay_s=0.001, concurrency=16)) as c:
        ids = [_create(c, duration=1) for _ in range(300)]
        during = scrape(c)
        for pred_id in ids:
            wait_done(c, pred_id, timeout=120)
        after = scrape(c)
    assert during[("musicgen_predictions_created_total", created("stereo-melody-large"))] == 300
    assert during[("musicgen_predictions_unfinished", ())] > 0  # it was scraped mid-burst
    assert after[("musicgen_predictions_ended_total", ended("stereo-melody-large", "succeeded"))] == 300
    assert after[("musicgen_predictions_unfinished", ())] == 0


def test_every_dashboard_query_names_a_series_the_server_exports(tmp_path):
    dashboard = json.loads((Path(__file__).parents[2] / "docs" / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    named = {name for expr in exprs for name in re.findall(r"\bmusicgen_[a-z_]+", expr)}
    with make_client(tmp_path) as c:
        text = c.get("/metrics").text
    families = {f.name for f in text_string_to_metric_families(text)}
    exported = families | {f"{name}{suffix}" for name in families for suffix in ("_total", "_bucket", "_sum", "_count")}
    assert len(exprs) >= 10 and named and named <= exported, named - exported
