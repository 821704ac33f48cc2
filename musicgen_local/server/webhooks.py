"""Webhook delivery as Replicate does it: event filter, 500 ms throttle, retries, Standard-Webhooks signing.

Events: `start` (once), `output`, `logs` (each throttled to one per 500 ms), `completed` (always).
Deliveries run on one asyncio loop in a thread of its own, so a receiver that is slow or never
answers holds up its own webhooks only:
- a prediction's webhooks go out one after another, in the order its events happened (its `start`
  is never delivered after its `completed`); different predictions' go out concurrently, at most
  PER_RECEIVER at once to any one receiver (scheme, host and port);
- every attempt has a deadline (`timeout_s`, for the whole exchange: a receiver that trickles its
  answer a byte at a time is cut off like one that sends nothing); a failed `completed` is retried with exponential
  backoff (12 retries from 100 ms, on connection errors and 429/5xx, as Cog does) on the loop's
  timers, never by a thread that sleeps;
- a receiver that took the request but did not answer in time is not sent it again: it has the
  body. Retrying those timeouts is what gave one slow receiver 13 copies of each `completed`;
- while a prediction's webhook waits for its receiver, a newer `logs`/`output` state replaces an
  older one not yet sent, so a slow receiver gets the latest state rather than a backlog;
- each attempt checks the URL against netpolicy (a name may resolve elsewhere than at create) and
  connects to the address it checked;
- a `completed` is kept in the store until it is delivered or given up on, so one still being
  retried when the process stops (SIGTERM, kill -9, a crash) is sent at the next start, with the
  same webhook-id.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from .. import netpolicy
from ..database import StorageFailed
from .prediction import Prediction
from .store import Store

log = logging.getLogger(__name__)
THROTTLED = ("logs", "output")
RETRY_STATUSES = {429, 500, 502, 503, 504}


def signing_secret(data_dir: Path) -> str:
    """The webhook signing secret, made once and kept in the data directory (readable by its owner only)."""
    path = Path(data_dir) / "webhook_secret"
    if not path.exists():
        path.write_text("whsec_" + base64.b64encode(os.urandom(32)).decode())
        path.chmod(0o600)
    return path.read_text().strip()


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
    event: str
    pred_id: str
    retries: int = 0


class WebhookSender:
    PER_RECEIVER = 8

    def __init__(
        self,
        secret: str,
        throttle_s: float = 0.5,
        retries: int = 12,
        backoff_s: float = 0.1,
        timeout_s: float = 5.0,
        block_private_urls: bool = False,
        render: Callable[[Prediction], dict[str, Any]] = Prediction.to_json,
        journal: Store | None = None,
    ) -> None:
        """`journal`: where `completed` webhooks are kept until delivered (or given up on), and found by
        resume() after a restart."""
        self.secret, self.render, self.journal = secret, render, journal
        self.throttle_s, self.retries, self.backoff_s = throttle_s, retries, backoff_s
        self.block_private_urls, self.timeout_s = block_private_urls, timeout_s
        self._lock = threading.Lock()  # notify() runs on the dispatcher's consumer threads, deadlines' and requests'
        self._last_sent: dict[str, float] = {}
        # The rest belongs to the loop's thread.
        self._lanes: dict[str, deque[Delivery]] = {}  # prediction id -> its webhooks not yet attempted
        self._receivers: dict[str, list] = {}  # receiver -> [semaphore, deliveries using it]
        self._tasks: set[asyncio.Task] = set()
        self._unsent = 0  # first attempts queued or in flight, for drain()
        self.counts = {"sent": 0, "failed": 0, "retried": 0, "given_up": 0}  # attempts by outcome, for /metrics
        self._client = httpx.AsyncClient(
            timeout=timeout_s, follow_redirects=False, limits=httpx.Limits(max_connections=None)
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="webhooks", daemon=True)
        self._thread.start()

    def notify(self, pred: Prediction, event: str) -> None:
        """Queue a delivery of `pred`'s current state, if its filter and the throttle allow it."""
        if not pred.webhook or event not in pred.webhook_events_filter:
            return
        with self._lock:  # rendering under it too keeps one prediction's webhooks in event order
            t = time.monotonic()
            if event in THROTTLED and t - self._last_sent.get(pred.id, -1e9) < self.throttle_s:
                return
            self._last_sent[pred.id] = t
            if event == "completed":
                self._last_sent.pop(pred.id, None)
            body = json.dumps(self.render(pred)).encode()
            delivery = Delivery(pred.webhook, body, f"msg_{uuid.uuid4().hex}", event, pred.id)
            if event == "completed" and self.journal is not None:
                try:
                    self.journal.keep_webhook(delivery.msg_id, pred.id, delivery.url, body, event)
                except StorageFailed as exc:  # still sent now; only a restart would lose it
                    log.error("prediction %s: %s", pred.id, exc)
            self._send(delivery)

    def resume(self) -> int:
        """Send the `completed` webhooks a previous process kept and did not deliver (same webhook-id)."""
        pending = self.journal.pending_webhooks() if self.journal is not None else []
        for msg_id, run_id, url, body, event in pending:
            self._send(Delivery(url, body, msg_id, event, run_id))
        if pending:
            log.info("webhooks: sending %d completed webhook(s) a previous run did not deliver", len(pending))
        return len(pending)

    def _send(self, delivery: Delivery) -> None:
        try:
            self._loop.call_soon_threadsafe(self._enqueue, delivery)
        except RuntimeError:  # closed: the server is shutting down (a kept `completed` goes at the next start)
            log.warning("prediction %s: webhook %s not sent: shutting down", delivery.pred_id, delivery.event)

    # -- on the loop's thread ----------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    def _enqueue(self, delivery: Delivery) -> None:
        lane = self._lanes.get(delivery.pred_id)
        if lane is None:
            lane = self._lanes[delivery.pred_id] = deque()
            self._spawn(self._run_lane(delivery.pred_id, lane))
        if delivery.event in THROTTLED and lane and lane[-1].event in THROTTLED:
            lane[-1] = delivery  # a newer state of the same prediction supersedes one not yet sent
            return
        lane.append(delivery)
        self._unsent += 1

    async def _run_lane(self, pred_id: str, lane: deque[Delivery]) -> None:
        while lane:
            try:
                await self._deliver(lane.popleft())
            finally:
                self._unsent -= 1
        del self._lanes[pred_id]

    async def _deliver(self, d: Delivery) -> None:
        try:
            async with self._slot(d.url):
                delivered = await self._attempt(d)
        except Exception:  # a bug of ours: log it, keep delivering everyone else's
            log.exception("prediction %s: webhook %s failed", d.pred_id, d.url)
            return
        self.counts["sent" if delivered else "failed"] += 1
        if d.event != "completed":
            return
        if delivered or d.retries == self.retries:
            if not delivered:
                self.counts["given_up"] += 1
                log.error("prediction %s: gave up on webhook %s after %d retries", d.pred_id, d.url, self.retries)
            if self.journal is not None:
                await asyncio.to_thread(self.journal.webhook_done, d.msg_id)
            return
        delay = self.backoff_s * 2**d.retries
        d.retries += 1
        self.counts["retried"] += 1
        self._loop.call_later(delay, lambda: self._spawn(self._deliver(d)))

    @asynccontextmanager
    async def _slot(self, url: str) -> AsyncIterator[None]:
        """At most PER_RECEIVER deliveries in flight to one receiver; others queue here, not elsewhere."""
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc}"
        entry = self._receivers.setdefault(key, [asyncio.Semaphore(self.PER_RECEIVER), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self._receivers[key]

    async def _attempt(self, d: Delivery) -> bool:
        """True when delivered, or failed in a way a retry will not fix (4xx, refused URL, no answer in time)."""
        reason, pinned = await asyncio.to_thread(netpolicy.pin, d.url, self.block_private_urls)
        if pinned is None:
            log.error("prediction %s: webhook %s refused: %s", d.pred_id, d.url, reason)
            return True
        ts = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": d.msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(self.secret, d.msg_id, ts, d.body),
            **pinned.headers,
        }
        try:
            async with asyncio.timeout(self.timeout_s):  # in all: httpx's own limit is per read, and a trickle never
                resp = await self._client.post(
                    pinned.url,
                    content=d.body,
                    headers=headers,  # waits long for a byte
                    extensions=pinned.extensions,
                )
        except (httpx.ReadTimeout, TimeoutError):
            log.warning(
                "prediction %s: webhook %s took the request but did not answer in time; not sent again",
                d.pred_id,
                d.url,
            )
            return True
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            log.warning("prediction %s: webhook %s failed: %s", d.pred_id, d.url, exc)
            return False
        if resp.status_code in RETRY_STATUSES:
            log.warning("prediction %s: webhook %s answered %d", d.pred_id, d.url, resp.status_code)
            return False
        return True

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()

    # -- any thread --------------------------------------------------------------------------------
    def drain(self, timeout: float = 5.0) -> None:
        """Wait until queued first attempts are done (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._unsent and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        """Drop what is still queued or scheduled, as a stopping server does."""
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=5)
        except (TimeoutError, RuntimeError):
            log.warning("webhooks: could not stop cleanly")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()
