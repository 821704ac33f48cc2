"""Webhooks: event filter, throttle, retries of `completed`, Standard-Webhooks signatures; one receiver's
trouble delays no other receiver; link-local and metadata addresses refused."""

from __future__ import annotations

import http.server
import json
import threading
import time

import pytest
import replicate.webhook
from server_helpers import V1, HangingReceiver, Receiver, make_client, wait_done

from musicgen_local.server.webhooks import WebhookSender, sign
from musicgen_local.testing.fake_engine import FakeEngine
from tests.rebinding import NAME, rebinding_dns


def test_all_events_signed_and_verifiable_with_the_python_client(tmp_path, receiver):
    with make_client(tmp_path, FakeEngine(step_delay_s=0.01)) as c:
        secret = c.get("/v1/webhooks/default/secret").json()["key"]
        pred = c.post(
            "/v1/predictions",
            json={"version": V1, "input": {"prompt": "x", "duration": 2, "seed": 1}, "webhook": receiver.url},
        ).json()
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
    assert headers["webhook-signature"] == sign(secret, headers["webhook-id"], int(headers["webhook-timestamp"]), body)


def test_completed_only_filter(client, receiver):
    client.post(
        "/v1/predictions",
        headers={"Prefer": "wait"},
        json={
            "version": V1,
            "input": {"prompt": "x", "duration": 1},
            "webhook": receiver.url,
            "webhook_events_filter": ["completed"],
        },
    )
    receiver.wait_for(lambda evs: len(evs) >= 1)
    client.app.state.runs["prediction"].webhooks.drain()
    assert [e["status"] for e in receiver.events()] == ["succeeded"]


def test_completed_is_retried_with_the_same_webhook_id(client):
    flaky = Receiver(fail_first=2)
    try:
        client.post(
            "/v1/predictions",
            headers={"Prefer": "wait"},
            json={
                "version": V1,
                "input": {"prompt": "x", "duration": 1},
                "webhook": flaky.url,
                "webhook_events_filter": ["completed"],
            },
        )
        flaky.wait_for(lambda evs: len(evs) == 3)
        assert len({h["webhook-id"] for h, _ in flaky.calls}) == 1
        assert all(json.loads(b)["status"] == "succeeded" for _, b in flaky.calls)
    finally:
        flaky.close()


def _create(client, hook: str, events: list[str] | None = None, duration: int = 1) -> str:
    body = {"version": V1, "input": {"prompt": "x", "duration": duration}, "webhook": hook}
    if events:
        body["webhook_events_filter"] = events
    resp = client.post("/v1/predictions", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def test_a_hanging_receiver_delays_no_one_else(tmp_path):
    """Six predictions' webhooks wait on a receiver that never answers; a healthy receiver still gets
    its `completed` within a second, and a failing one its retries on schedule."""
    hanging, healthy, failing = HangingReceiver(), Receiver(), Receiver(fail_first=3)
    try:
        with make_client(tmp_path, webhook_backoff_s=0.05) as c:
            for _ in range(6):
                _create(c, hanging.url)
            healthy_id = _create(c, healthy.url, ["completed"])
            failing_id = _create(c, failing.url, ["completed"])
            wait_done(c, healthy_id)
            healthy.wait_for(lambda evs: len(evs) == 1, timeout=1.0)
            wait_done(c, failing_id)
            failing.wait_for(lambda evs: len(evs) == 4, timeout=2.0)  # retried after 0.05, 0.1, 0.2 s
    finally:
        for r in (hanging, healthy, failing):
            r.close()


def test_a_slow_receiver_gets_one_copy_of_completed(tmp_path):
    """It took the request and answered after the timeout: it has the body, so it is not sent again."""
    slow = Receiver(delay_s=1.0)
    try:
        with make_client(tmp_path, webhook_backoff_s=0.05, webhook_timeout_s=0.3) as c:
            _create(c, slow.url, ["completed"])
            slow.wait_for(lambda evs: len(evs) == 1)
            time.sleep(1.5)  # retries would come after 0.05, 0.1, 0.2, ... s
        assert [e["status"] for e in slow.events()] == ["succeeded"]
    finally:
        slow.close()


class TricklingReceiver(Receiver):
    """Answers 200 with a body of 40 bytes, one every 0.1 s: no single read waits long, the whole takes 4 s."""

    def __init__(self) -> None:
        self.cut = threading.Event()  # the sender hung up before the answer was whole
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                self.send_response(200)
                self.send_header("Content-Length", "40")
                self.end_headers()
                try:
                    for _ in range(40):
                        self.wfile.write(b".")
                        self.wfile.flush()
                        time.sleep(0.1)
                except OSError:
                    receiver.cut.set()

            def log_message(self, *args) -> None:
                pass

        self.listen(Handler)


def test_a_receiver_that_trickles_its_answer_is_cut_off_at_the_deadline(tmp_path):
    trickling = TricklingReceiver()
    try:
        with make_client(tmp_path, webhook_timeout_s=0.3) as c:
            _create(c, trickling.url, ["completed"])
            assert trickling.cut.wait(3.5)  # before its 4 s answer was whole
    finally:
        trickling.close()


def test_each_predictions_webhooks_arrive_in_order_at_a_slow_receiver(tmp_path):
    slow = Receiver(delay_s=0.2)
    try:
        with make_client(tmp_path, FakeEngine(step_delay_s=0.01), webhook_throttle_s=0.1) as c:
            ids = [_create(c, slow.url) for _ in range(3)]
            slow.wait_for(lambda evs: sum(e["status"] == "succeeded" for e in evs) == 3, timeout=20)
        for pred_id in ids:
            statuses = [e["status"] for e in slow.events() if e["id"] == pred_id]
            assert statuses[0] == "processing" and statuses[-1] == "succeeded", statuses
            assert statuses.count("succeeded") == 1
    finally:
        slow.close()


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/hook",
        "http://[fd00:ec2::254]/hook",
        "http://2852039166/hook",
        "http://[fe80::1]/hook",
    ],
)
def test_webhook_to_a_link_local_or_metadata_address_is_422(client, fake_engine, monkeypatch, url):
    # Should the check ever break, nothing may be sent there from this machine: deliveries are dropped.
    monkeypatch.setattr(WebhookSender, "notify", lambda self, pred, event: None)
    resp = client.post("/v1/predictions", json={"version": V1, "input": {"prompt": "x"}, "webhook": url})
    assert resp.status_code == 422
    assert resp.json()["invalid_fields"][0]["field"] == "webhook"
    assert "link-local or cloud-metadata address" in resp.json()["detail"]
    assert client.get("/v1/predictions").json()["results"] == [] and fake_engine.requests == []


def test_private_and_loopback_receivers_are_allowed_unless_blocked(tmp_path, receiver):
    with make_client(tmp_path) as c:
        _create(c, receiver.url, ["completed"])
        receiver.wait_for(lambda evs: len(evs) == 1)
    with make_client(tmp_path, settings={"block_private_urls": True}) as c:
        resp = c.post("/v1/predictions", json={"version": V1, "input": {"prompt": "x"}, "webhook": receiver.url})
        assert resp.status_code == 422
        assert "private, loopback or reserved address" in resp.json()["invalid_fields"][0]["description"]


def test_a_name_that_rebinds_after_the_check_is_sent_to_the_address_checked(tmp_path, receiver, monkeypatch):
    """The name answers 127.0.0.1 to the check at create and to the check before sending, then the metadata
    address: the webhook still goes to 127.0.0.1, with the name in its Host header."""
    answers = rebinding_dns(monkeypatch, honest_answers=2)
    port = receiver.url.split(":")[2].split("/")[0]
    with make_client(tmp_path) as c:
        _create(c, receiver.url.replace("127.0.0.1", NAME), ["completed"])
        receiver.wait_for(lambda evs: len(evs) == 1)
    assert receiver.calls[0][0]["host"] == f"{NAME}:{port}" and answers == ["127.0.0.1", "127.0.0.1"]
