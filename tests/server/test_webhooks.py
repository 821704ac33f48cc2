"""Webhooks: event filter, throttle, retries of `completed`, Standard-Webhooks signatures."""

from __future__ import annotations

import json

import pytest
import replicate.webhook
from server_helpers import V1, Receiver, make_client

from musicgen_local.server.webhooks import sign
from musicgen_local.testing.fake_engine import FakeEngine


def test_all_events_signed_and_verifiable_with_the_python_client(tmp_path, receiver):
    with make_client(tmp_path, FakeEngine(step_delay_s=0.01)) as c:
        secret = c.get("/v1/webhooks/default/secret").json()["key"]
        pred = c.post("/v1/predictions", json={"version": V1, "input": {"prompt": "x", "duration": 2, "seed": 1},
                                               "webhook": receiver.url}).json()
        receiver.wait_for(lambda evs: evs and evs[-1]["status"] == "succeeded")
    statuses = [e["status"] for e in receiver.events()]
    assert statuses[0] == "processing" and statuses[-1] == "succeeded" and "succeeded" not in statuses[:-1]
    # 100 steps at 10 ms: ~1 s of logs, so the 500 ms throttle lets through only a handful of log events
    assert 2 <= len(statuses) <= 8
    final = receiver.events()[-1]
    assert final["id"] == pred["id"] and final["output"].endswith(f"/delivery/{pred['id']}/out.wav")
    key = replicate.webhook.WebhookSigningSecret(key=secret)
    for headers, body in receiver.calls:  # validate() raises on a bad signature, returns None otherwise
        replicate.webhook.Webhooks.validate(headers=headers, body=body.decode(), secret=key, tolerance=60)
    with pytest.raises(replicate.webhook.InvalidSignatureError):
        replicate.webhook.Webhooks.validate(headers=headers, body=body.decode().replace("x", "y"), secret=key)
    headers, body = receiver.calls[-1]
    assert headers["webhook-signature"] == sign(secret, headers["webhook-id"], int(headers["webhook-timestamp"]),
                                                body)


def test_completed_only_filter(client, receiver):
    client.post("/v1/predictions", headers={"Prefer": "wait"},
                json={"version": V1, "input": {"prompt": "x", "duration": 1}, "webhook": receiver.url,
                      "webhook_events_filter": ["completed"]})
    receiver.wait_for(lambda evs: len(evs) >= 1)
    client.app.state.webhooks.drain()
    assert [e["status"] for e in receiver.events()] == ["succeeded"]


def test_completed_is_retried_with_the_same_webhook_id(client):
    flaky = Receiver(fail_first=2)
    try:
        client.post("/v1/predictions", headers={"Prefer": "wait"},
                    json={"version": V1, "input": {"prompt": "x", "duration": 1}, "webhook": flaky.url,
                          "webhook_events_filter": ["completed"]})
        flaky.wait_for(lambda evs: len(evs) == 3)
        assert len({h["webhook-id"] for h, _ in flaky.calls}) == 1
        assert all(json.loads(b)["status"] == "succeeded" for _, b in flaky.calls)
    finally:
        flaky.server.shutdown()
