"""Worker threads feeding the engine: as many as it can use at once (`engine.concurrency`: one, or
MUSICGEN_MAX_BATCH when the fast decoder batches concurrent requests), predictions started in order.

The engine is blocking; it runs here, never on the event loop, so HTTP stays responsive. Progress
becomes tqdm-style log lines (what the Node client's `parseProgressFromLogs` reads), cancellation is
a flag the engine checks between decoding steps.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable

from tqdm import tqdm

from ..engine.api import Engine, Hooks, Request
from ..errors import Cancelled, MusicgenError
from ..schema import parse_input
from .prediction import Prediction, now
from .store import Store
from .webhooks import WebhookSender

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, engine: Engine, store: Store, webhooks: WebhookSender,
                 resolve_audio: Callable[[str], str] = lambda url: url) -> None:
        self.engine, self.store, self.webhooks = engine, store, webhooks
        self.resolve_audio = resolve_audio  # our own /v1/files URLs -> local paths
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()  # a queued prediction is either canceled or started, never both
        self._threads = [threading.Thread(target=self._run, name=f"engine-worker-{i}", daemon=True)
                         for i in range(max(1, engine.concurrency))]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + 30
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def submit(self, pred: Prediction) -> None:
        self.store.add(pred)
        self._queue.put(pred.id)

    def cancel(self, pred: Prediction) -> None:
        """A queued prediction ends now; a running one at the engine's next decoding step."""
        with self._lock:
            if pred.done:
                return
            if pred.status == "starting":
                return self._finish(pred, "canceled")
            self._cancelled.add(pred.id)  # the running prediction's thread discards it when it ends

    def _run(self) -> None:
        while (pred_id := self._queue.get()) is not None:
            pred = self.store.get(pred_id)
            with self._lock:
                if pred is None or pred.done:  # canceled while queued
                    continue
                pred.status, pred.started_at = "processing", now()
            try:
                self._generate(pred)
            except Exception:  # a bug of ours: fail this prediction, keep serving the next ones
                log.exception("prediction %s: unexpected error", pred.id)
                self._finish(pred, "failed", "Internal error while generating; see the server log.")
            finally:
                self._cancelled.discard(pred_id)

    def _generate(self, pred: Prediction) -> None:
        self.store.save(pred)
        self.webhooks.notify(pred, "start")
        out_dir = self.store.prediction_dir(pred.id)
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            result = self.engine.generate(self._request(pred), out_dir, self._hooks(pred))
        except Cancelled:
            return self._finish(pred, "canceled")
        except MusicgenError as exc:  # UserError, WeightsMissingError: the message says what to do
            return self._finish(pred, "failed", str(exc))
        if result.path.parent.resolve() != out_dir.resolve():
            shutil.copy(result.path, out_dir / result.path.name)
        pred.output_file, pred.seed = result.path.name, result.seed
        self.webhooks.notify(pred, "output")
        self._finish(pred, "succeeded")

    def _request(self, pred: Prediction) -> Request:
        data = parse_input(pred.input).model_dump()
        if data.get("input_audio"):
            data["input_audio"] = self.resolve_audio(data["input_audio"])
        return Request.from_input(data)

    def _hooks(self, pred: Prediction) -> Hooks:
        started = time.monotonic()
        last_percent = [-1]

        def on_log(line: str) -> None:
            log.info("prediction %s: %s", pred.id, line)
            pred.logs += line.rstrip("\n") + "\n"
            self.webhooks.notify(pred, "logs")

        def on_progress(done: int, total: int) -> None:
            percent = int(100 * done / max(total, 1))
            if percent != last_percent[0]:  # at most ~100 progress lines per prediction
                last_percent[0] = percent
                on_log(tqdm.format_meter(done, total, time.monotonic() - started))

        return Hooks(on_progress=on_progress, on_log=on_log, is_cancelled=lambda: pred.id in self._cancelled)

    def _finish(self, pred: Prediction, status: str, error: str | None = None) -> None:
        pred.status, pred.error, pred.completed_at = status, error, now()
        self.store.save(pred)
        log.info("prediction %s: %s%s", pred.id, status, f" ({error})" if error else "")
        self.webhooks.notify(pred, "completed")
