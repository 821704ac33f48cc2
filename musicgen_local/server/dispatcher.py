"""Predictions into the engine and its events back into predictions.

Queued predictions wait here, oldest first, until the engine has room (`engine.capacity` runs in
flight) and, for a deployment's prediction, until fewer than its `max_instances` run (`instances`: the
others go ahead of it meanwhile). Runs with a file input to fetch (a URL that may take a minute to
answer, or never) queue in a lane of their own with the same capacity, so that no number of slow inputs
holds a slot a run without one needs. Each run in flight has a thread that turns its events into the
prediction's status, logs, webhooks and output file. Listeners (the SSE streams) see every event too,
each line of `logs` as a Log event (progress lines included). Nothing here touches a tensor or waits on
the GPU: a slow consumer only delays its own prediction's bookkeeping.

After a crash the store still holds what was queued or running: `start` queues it again in order; a
prediction that was running is run once more from the start (its seed was fixed at creation, so it
gives the same audio). One handed to the engine twice already (`attempts`, counted in the store before
the engine sees it) is failed with a message instead, whether it had started generating or was still
being prepared: an input that kills the process must not kill every start after it. A graceful stop is
not such a death: what a drain leaves unfinished (a training stopped at its checkpoint, a prediction
still generating at the grace's end) gives its start back, so deploys do not count toward the limit.

A run that was asked to cancel (POST .../cancel, Cancel-After) ends `canceled` whatever failure its engine
reports after the ask (a download interrupted by the cancel, a device lost meanwhile): only a result that
was already made (Done, Trained) still ends it otherwise.

A prediction the engine could not start because its device failed (`Failed(kind="device")`) is not
failed: it stays `starting`, queued again while the engine still has healthy devices (on Ray, a
replaced replica), else kept in the store for the restart that follows.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable

from tqdm import tqdm

from .. import logs
from ..database import StorageFailed
from ..engine.api import (
    Audio,
    Canceled,
    Done,
    EngineClient,
    Event,
    Failed,
    Log,
    LoopRequest,
    Progress,
    Request,
    Run,
    Started,
    request_from_record,
)
from ..registry import Registry
from .metrics import Observer
from .metrics import model_of as _model
from .prediction import Prediction, now
from .store import Store
from .webhooks import WebhookSender

log = logging.getLogger(__name__)
Listener = Callable[[Prediction, Event], None]
INTERRUPTED_TWICE = (
    "The server stopped twice while this prediction was starting or running, so it was not run "
    "a third time. Create the prediction again."
)


class Dispatcher:
    NOUN = "prediction"
    INTERRUPTED_TWICE = INTERRUPTED_TWICE
    RESTARTED = "The server restarted while this prediction was running: running it again."

    def __init__(
        self,
        engine: EngineClient,
        store: Store,
        webhooks: WebhookSender,
        capacity: int = 1,
        observer: Observer | None = None,
        registry: Registry | None = None,
    ) -> None:
        """`observer`: told when a run is created, starts, streams its first audio and ends (metrics); `registry`:
        the models and versions, for a kind whose runs make versions."""
        self.engine, self.store, self.webhooks, self.registry = engine, store, webhooks, registry
        self.observer = observer or _Unobserved()
        self.capacity = max(1, capacity)
        # prediction ids not handed to the engine yet, oldest first, by lane (with a file input to fetch, or not)
        self._queues: dict[bool, deque[str]] = {False: deque(), True: deque()}
        self._runs: dict[str, Run] = {}  # handed to the engine and not finished
        self._in_flight: dict[bool, set[str]] = {False: set(), True: set()}  # of _runs, by lane
        self._held: set[str] = set()  # draining: runs canceled only to stay queued for the next start
        self._given_back: set[str] = set()  # runs whose start a graceful stop gave back (once each)
        self._canceling: set[str] = set()  # runs in the engine that were asked to cancel
        self._changed = threading.Condition()
        self._feeding = True
        self.accepting = True  # False while draining: creates are refused (503)
        self._listeners: list[Listener] = []
        self._on_finished: list[Callable[[Prediction], None]] = []
        self._finish_waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._feeder = threading.Thread(target=self._feed, name="dispatcher", daemon=True)
        # A deployment's max_instances (None: no cap); `wake()` once one changed.
        self.instances: Callable[[str], int | None] = lambda deployment: None

    # ---------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Queue what the store left unfinished (a crash or a drained shutdown), then start feeding."""
        for pred in self.store.unfinished():
            if pred.attempts >= 2:
                self._finish(pred, "failed", self.INTERRUPTED_TWICE)
                continue
            restarted = pred.status == "processing"
            pred.status, pred.started_at = "starting", None
            if restarted:
                self._log(pred, self.RESTARTED)
            self.store.save(pred)
            self._queue_of(pred).append(pred.id)
        self._feeder.start()

    def drain(self, grace_s: float) -> None:
        """Stop taking predictions; let those generating finish for up to `grace_s`; leave the rest
        (queued, or still generating at the deadline) stored as they are, for the next start."""
        if not self.accepting:  # draining already (a second signal, then the app's shutdown): stop now
            self._stop_gracefully(0)
            return
        self.accepting = False
        with self._changed:
            self._feeding = False
            self._changed.notify_all()
            not_started = [pid for pid in self._runs if self.store.get(pid).status == "starting"]
            self._held.update(not_started)
        for pid in not_started:
            if (run := self._runs.get(pid)) is not None:
                run.cancel()
        self._stop_gracefully(grace_s)

    def _stop_gracefully(self, grace_s: float) -> None:
        """Wait up to `grace_s` for the runs in the engine; those still there run again at the next start, and that
        start is not counted against them (their process stopped; they did not kill it)."""
        with self._changed:
            self._changed.wait_for(lambda: not self._runs, timeout=grace_s)
            left = list(self._runs)
        given = [pid for pid in left if (pred := self.store.get(pid)) is not None and self._give_back_start(pred)]
        if given:
            log.warning(
                "shutting down with %d %s(s) unfinished; they run again at the next start",
                len(given),
                self.NOUN,
            )

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def on_finished(self, hook: Callable[[Prediction], None]) -> None:
        """`hook(pred)` once a prediction has ended, however it ended: the one place that is learned."""
        self._on_finished.append(hook)

    async def wait_finished(self, pred: Prediction, timeout: float) -> None:
        """Until `pred` has ended or `timeout` seconds passed, woken by its end (no polling)."""
        loop, ended = asyncio.get_running_loop(), asyncio.Event()
        with self._changed:
            if pred.done:
                return
            waiter = (loop, ended)
            self._finish_waiters.setdefault(pred.id, []).append(waiter)
        try:
            await asyncio.wait_for(ended.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            with self._changed:
                waiters = self._finish_waiters.get(pred.id, [])
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    self._finish_waiters.pop(pred.id, None)

    # ---------------------------------------------------------------------------------- predictions

    def submit(self, pred: Prediction) -> None:
        self.store.add(pred)
        self.observer.on_created(pred)
        with self._changed:
            self._queue_of(pred).append(pred.id)
            self._changed.notify_all()

    def wake(self) -> None:
        """Look at the queue again: a deployment's max_instances changed."""
        with self._changed:
            self._changed.notify_all()

    def queued(self) -> int:
        """Runs created and not yet handed to the engine."""
        with self._changed:
            return sum(len(queue) for queue in self._queues.values())

    @staticmethod
    def _lane(pred: Prediction) -> bool:
        """True for a run with a file input to fetch before it can run (a prediction's input_audio URL)."""
        return str((pred.request or {}).get("input_audio") or "").startswith(("http://", "https://"))

    def _queue_of(self, pred: Prediction) -> deque[str]:
        return self._queues[self._lane(pred)]

    def cancel(self, pred: Prediction) -> None:
        """A prediction that has not started ends now; one generating as soon as the engine stops it."""
        with self._changed:
            if pred.done:
                return
            run = self._runs.get(pred.id)
            if run is None and pred.id in self._queue_of(pred):
                self._queue_of(pred).remove(pred.id)
        if run is not None:
            self._canceling.add(pred.id)
            run.cancel()
        if pred.status == "starting":  # whatever the engine says later about it is ignored
            self._finish(pred, "canceled")

    # ---------------------------------------------------------------------------------- feeding

    def _ready(self) -> tuple[bool, str] | None:
        """A lane with room in flight and the run queued there that may start now (the lane without inputs first),
        or None."""
        for lane in (False, True):
            if self._room(lane) and (pred_id := self._next(self._queues[lane])) is not None:
                return lane, pred_id
        return None

    def _room(self, lane: bool) -> bool:
        return len(self._in_flight[lane]) < self.capacity

    def _feed(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: not self._feeding or self._ready() is not None)
                if not self._feeding:
                    return
                lane, pred_id = self._ready()
                self._queues[lane].remove(pred_id)
                pred = self.store.get(pred_id)
                if pred is None or pred.done:
                    continue
                pred.attempts += 1
                self.store.save(pred)
                run = self._runs[pred.id] = self._submit_to_engine(pred)
                self._in_flight[lane].add(pred.id)
            threading.Thread(target=self._consume, args=(pred, run), name=f"run-{pred.id[:8]}", daemon=True).start()

    def _next(self, queue: deque[str]) -> str | None:
        """The oldest run of `queue` that may start now: a deployment's waits while `max_instances` of it run."""
        running: Counter[str | None] | None = None
        for pred_id in queue:
            pred = self.store.get(pred_id)
            deployment = getattr(pred, "deployment", None) if pred is not None and not pred.done else None
            cap = self.instances(deployment) if deployment is not None else None
            if cap is None:
                return pred_id
            if running is None:
                running = Counter(getattr(self.store.get(r), "deployment", None) for r in self._runs)
            if running[deployment] < cap:
                return pred_id
        return None

    def _submit_to_engine(self, pred: Prediction) -> Run:
        return self.engine.submit(_engine_request(pred), stream=True)

    def _consume(self, pred: Prediction, run: Run) -> None:
        with logs.about(self.NOUN, pred.id, _model(pred)):
            self._consume_events(pred, run)

    def _consume_events(self, pred: Prediction, run: Run) -> None:
        on_progress = _progress_lines(lambda line: self._log(pred, line))
        try:
            for event in run:
                if pred.done:  # canceled before it started: the engine's last words do not matter
                    continue
                self._handle(pred, event, on_progress)
                if not isinstance(event, Log | Progress):  # lines reach the listeners from _log, as they are logged
                    self._tell(pred, event)
        except Exception:  # a bug of ours: fail this prediction, keep serving the others
            log.exception("%s %s: unexpected error", self.NOUN, pred.id)
            self._finish(pred, "failed", "Internal error while generating; see the server log.")
        finally:
            with self._changed:
                self._runs.pop(pred.id, None)
                for in_flight in self._in_flight.values():
                    in_flight.discard(pred.id)
                self._canceling.discard(pred.id)
                self._changed.notify_all()

    def _handle(self, pred: Prediction, event: Event, on_progress: Callable[[Progress], None]) -> None:
        if isinstance(event, Started):
            pred.status, pred.started_at = "processing", now()
            self.store.save(pred)
            self.observer.on_started(pred)
            self.webhooks.notify(pred, "start")
        elif isinstance(event, Log):
            self._log(pred, event.line)
        elif isinstance(event, Progress):
            on_progress(event)
        elif isinstance(event, Done):
            self._done(pred, event)
        elif isinstance(event, Failed):
            if pred.id in self._canceling:  # what failed after the ask does not change the answer
                log.info("%s %s: canceled (its engine also said: %s)", self.NOUN, pred.id, event.message)
                self._finish(pred, "canceled")
                return
            if event.kind == "device" and self._runs_again_after_device_loss(pred):
                self._requeue_after_device_loss(pred, event.message)
                return
            if event.kind == "internal":
                log.error("prediction %s: %s", pred.id, event.message)
            self._finish(pred, "failed", event.message)
        elif isinstance(event, Canceled):
            if pred.id in self._held:  # canceled by a drain before it started: it stays queued
                self._give_back_start(pred)
            else:
                self._finish(pred, "canceled")
        elif isinstance(event, Audio):
            self.observer.on_audio(pred)
        else:
            self._other(pred, event)

    def _done(self, pred: Prediction, event: Done) -> None:
        folder, files = self.store.prediction_dir(pred.id), event.result.files()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for filename, data in files.values():
                (folder / filename).write_bytes(data)
        except OSError as exc:  # a full disk: the prediction fails saying so, and ends like any other
            for filename, _ in files.values():
                (folder / filename).unlink(missing_ok=True)
            log.error("%s %s: its output could not be written: %s", self.NOUN, pred.id, exc)
            return self._finish(pred, "failed", str(StorageFailed("the output", exc)))
        if None in files:
            pred.output_file = files[None][0]
        else:  # an output object: name -> its file
            pred.output_files = {name: filename for name, (filename, _) in files.items()}
        self.webhooks.notify(pred, "output")
        self._finish(pred, "succeeded")

    def _give_back_start(self, pred: Prediction) -> bool:
        """The start a drain interrupted does not count toward INTERRUPTED_TWICE (once per run); False if it was
        given back already, or the run has ended."""
        with self._changed:
            if pred.done or pred.id in self._given_back:
                return False
            self._given_back.add(pred.id)
        pred.attempts -= 1
        self.store.save(pred)
        return True

    def _other(self, pred: Prediction, event: Event) -> None:
        log.warning("%s %s: unknown event %r", self.NOUN, pred.id, event)

    def _runs_again_after_device_loss(self, pred: Prediction) -> bool:
        return pred.status == "starting"  # one that had started generating is failed: it would start over

    def _requeue_after_device_loss(self, pred: Prediction, message: str) -> None:
        if self.engine.health().get("status") == "UNHEALTHY":  # this process is going away: the next start runs it
            self._give_back_start(pred)  # once: the drain that follows may find it still in the engine
            log.warning("%s %s: kept queued for the restart (%s)", self.NOUN, pred.id, message)
            return
        pred.attempts -= 1
        self.store.save(pred)
        with self._changed:
            self._queue_of(pred).appendleft(pred.id)
            self._changed.notify_all()

    def _tell(self, pred: Prediction, event: Event) -> None:
        for listener in self._listeners:
            listener(pred, event)

    def _log(self, pred: Prediction, line: str) -> None:
        """A line into the prediction's `logs`, and to the listeners as a Log event (told first: a stream that
        starts meanwhile takes the `logs` so far and then this line, never the line twice)."""
        log.info("%s %s: %s", self.NOUN, pred.id, line)
        self._tell(pred, Log(line.rstrip("\n")))
        pred.logs += line.rstrip("\n") + "\n"
        if pred.status == "processing":  # as on Replicate, `start` is the first webhook; it carries earlier logs
            self.webhooks.notify(pred, "logs")

    def _finish(self, pred: Prediction, status: str, error: str | None = None) -> None:
        pred.status, pred.error, pred.completed_at = status, error, now()
        self.store.save(pred)
        log.info("%s %s: %s%s", self.NOUN, pred.id, status, f" ({error})" if error else "")
        self.observer.on_ended(pred)
        self.webhooks.notify(pred, "completed")
        for hook in self._on_finished:
            hook(pred)
        with self._changed:
            waiters = self._finish_waiters.pop(pred.id, [])
        for loop, ended in waiters:
            loop.call_soon_threadsafe(ended.set)


class _Unobserved:
    def on_created(self, run: Prediction) -> None: ...
    def on_started(self, run: Prediction) -> None: ...
    def on_audio(self, run: Prediction) -> None: ...
    def on_ended(self, run: Prediction) -> None: ...


def _engine_request(pred: Prediction) -> Request | LoopRequest:
    """The engine's request, as the front door built it at creation (seed fixed, input resolved)."""
    return request_from_record(pred.request)


def _progress_lines(log_line: Callable[[str], None]) -> Callable[[Progress], None]:
    """tqdm-style lines (what the Node client's `parseProgressFromLogs` reads), one per percent at most."""
    started, last = time.monotonic(), [-1]

    def on_progress(event: Progress) -> None:
        percent = int(100 * event.done / max(event.total, 1))
        if percent != last[0]:
            last[0] = percent
            postfix = f"loss={event.loss:.4f}" if event.loss is not None else None
            log_line(tqdm.format_meter(event.done, event.total, time.monotonic() - started, postfix=postfix))

    return on_progress
