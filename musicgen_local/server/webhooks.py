"""Webhook delivery as Replicate does it: event filter, 500 ms throttle, retries, Standard-Webhooks signing.

Events: `start` (once), `output`, `logs` (each throttled to one per 500 ms), `completed` (always).
Deliveries go out in order from one sender thread so a fast prediction never sends `completed`
before `start`; a failed `completed` is retried with exponential backoff on a separate pool so one
dead receiver does not hold up everyone else's webhooks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from .prediction import Prediction

log = logging.getLogger(__name__)
THROTTLED = ("logs", "output")
RETRY_STATUSES = {429, 500, 502, 503, 504}


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` of `id.timestamp.body`, keyed by the base64 part after `whsec_`."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    content = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


@dataclass
class Delivery:
    url: str
    body: bytes
    msg_id: str  # stable across retries, so receivers can de-duplicate
    terminal: bool
    pred_id: str


class WebhookSender:
    def __init__(self, secret: str, throttle_s: float = 0.5, retries: int = 12, backoff_s: float = 0.1,
                 render: Callable[[Prediction], dict[str, Any]] = Prediction.to_json) -> None:
        self.secret, self.render = secret, render
        self.throttle_s, self.retries, self.backoff_s = throttle_s, retries, backoff_s
        self._last_sent: dict[str, float] = {}
        self._queue: queue.Queue[Delivery | None] = queue.Queue()
        self._client = httpx.Client(timeout=10.0, follow_redirects=False)
        self._retry_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook-retry")
        self._thread = threading.Thread(target=self._run, name="webhook-sender", daemon=True)
        self._thread.start()

    def notify(self, pred: Prediction, event: str) -> None:
        """Queue a delivery of `pred`'s current state, if its filter and the throttle allow it."""
        if not pred.webhook or event not in pred.webhook_events_filter:
            return
        t = time.monotonic()
        if event in THROTTLED and t - self._last_sent.get(pred.id, -1e9) < self.throttle_s:
            return
        self._last_sent[pred.id] = t
        if event == "completed":
            self._last_sent.pop(pred.id, None)
        body = json.dumps(self.render(pred)).encode()
        self._queue.put(Delivery(pred.webhook, body, f"msg_{uuid.uuid4().hex}", event == "completed", pred.id))

    def _run(self) -> None:
        while (delivery := self._queue.get()) is not None:
            if not self._attempt(delivery) and delivery.terminal:
                self._retry_pool.submit(self._retry, delivery)

    def _retry(self, delivery: Delivery) -> None:
        for n in range(self.retries):
            time.sleep(self.backoff_s * 2**n)
            if self._attempt(delivery):
                return
        log.error("prediction %s: gave up on webhook %s after %d retries", delivery.pred_id, delivery.url, self.retries)

    def _attempt(self, d: Delivery) -> bool:
        """True when delivered, or when failed in a way a retry will not fix (e.g. 4xx)."""
        ts = int(time.time())
        headers = {"content-type": "application/json", "webhook-id": d.msg_id, "webhook-timestamp": str(ts),
                   "webhook-signature": sign(self.secret, d.msg_id, ts, d.body)}
        try:
            resp = self._client.post(d.url, content=d.body, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("prediction %s: webhook %s failed: %s", d.pred_id, d.url, exc)
            return False
        if resp.status_code in RETRY_STATUSES:
            log.warning("prediction %s: webhook %s answered %d", d.pred_id, d.url, resp.status_code)
            return False
        return True

    def drain(self, timeout: float = 5.0) -> None:
        """Wait until queued first attempts are done (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)
        self._retry_pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
