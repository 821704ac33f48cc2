"""`Cancel-After`: one thread over a heap of deadlines, rather than a timer thread per prediction.

When a deadline passes, `cancel(prediction id)` runs; the app makes that the same dispatcher.cancel a
POST .../cancel does, which ignores a prediction that already finished. A prediction keeps its
deadline (`Prediction.cancel_at`): a restart runs unfinished predictions again, and `restore` gives
their deadlines back to the new process, so a deadline that passed while it was down cancels at once.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

log = logging.getLogger(__name__)


class Deadlines:
    def __init__(self, cancel: Callable[[str], None]) -> None:
        self._cancel = cancel
        self._heap: list[tuple[float, str]] = []  # (time.monotonic() deadline, prediction id)
        self._changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="cancel-after", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify()
        self._thread.join(timeout=5)

    def restore(self, runs) -> None:
        """The deadlines of unfinished runs read back at start-up."""
        for run in runs:
            if run.cancel_at is not None:
                self.add(run.id, max(0.0, (run.cancel_at - datetime.now(UTC)).total_seconds()))

    def add(self, pred_id: str, after_s: float) -> None:
        with self._changed:
            heapq.heappush(self._heap, (time.monotonic() + after_s, pred_id))
            self._changed.notify()  # it may be earlier than the deadline the thread sleeps towards

    def _run(self) -> None:
        while (pred_id := self._next_due()) is not None:
            try:
                self._cancel(pred_id)
            except Exception:  # a bug of ours: log it, keep enforcing the other deadlines
                log.exception("prediction %s: Cancel-After failed", pred_id)

    def _next_due(self) -> str | None:
        """Block until a deadline passes (its prediction id) or stop() is called (None)."""
        with self._changed:
            while not self._stopping:
                delay = self._heap[0][0] - time.monotonic() if self._heap else None
                if delay is not None and delay <= 0:
                    return heapq.heappop(self._heap)[1]
                # Condition.wait refuses timeouts above TIMEOUT_MAX; a huge Cancel-After is legal
                self._changed.wait(None if delay is None else min(delay, threading.TIMEOUT_MAX))
            return None
