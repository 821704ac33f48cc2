"""Kinds of run, one stack: a prediction and a training (and whatever kind comes next) are cases of one definition.

A `Kind` says what differs between them: the record (`Prediction`, `Training`), the dispatcher (how a run is handed
to the engine, what its last event makes of it), how many run at once, whether MUSICGEN_RETENTION and
MUSICGEN_SHUTDOWN_GRACE apply. A `RunStack` is one kind's table in the store, webhooks, dispatcher and Cancel-After
deadlines, built the same way for every kind. `RunStacks` is the list the app is built from; the rules that hold
for every kind are written here once: at start, unfinished runs are queued again and their deadlines restored; a
SIGTERM (or a lost device) refuses creates of every kind and drains them; webhooks are drained before the exit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..database import Database
from ..engine.api import EngineClient
from ..registry import Registry
from ..settings import Settings
from .deadlines import Deadlines
from .dispatcher import Dispatcher
from .metrics import Metrics
from .prediction import Prediction
from .store import Store
from .training import Training
from .training_dispatcher import TrainingDispatcher
from .webhooks import WebhookSender

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Kind:
    noun: str  # "prediction": its table is `predictions`, its routes /v1/predictions
    record: type[Prediction]
    dispatcher: type[Dispatcher]
    capacity: Callable[[EngineClient], int]  # runs worth having in the engine at once
    retention: bool  # MUSICGEN_RETENTION removes finished runs' files
    waits_at_shutdown: bool  # a drain gives running ones MUSICGEN_SHUTDOWN_GRACE to finish (else: resumed later)

    @property
    def plural(self) -> str:
        return f"{self.noun}s"


PREDICTION = Kind(
    "prediction",
    Prediction,
    Dispatcher,
    capacity=lambda engine: getattr(engine, "capacity", 1),
    retention=True,
    waits_at_shutdown=True,
)
# A training is not waited for at shutdown (it may have hours left): it stops, and resumes from its checkpoint.
# Its weights serve the versions it made, so retention keeps them (see Store.remove_expired).
TRAINING = Kind(
    "training",
    Training,
    TrainingDispatcher,
    capacity=lambda engine: getattr(engine, "training_capacity", 1),  # one per device
    retention=True,
    waits_at_shutdown=False,
)
KINDS = (PREDICTION, TRAINING)


@dataclass(frozen=True)
class WebhookTiming:
    throttle_s: float = 0.5
    backoff_s: float = 0.1
    timeout_s: float = 5.0


@dataclass(frozen=True)
class Wiring:
    """What every kind's stack is built with."""

    settings: Settings
    engine: EngineClient
    database: Database
    registry: Registry
    metrics: Metrics
    secret: str  # the webhook signing secret
    timing: WebhookTiming = WebhookTiming()


class RunStack:
    """One kind's store, webhooks, dispatcher and deadlines."""

    def __init__(self, kind: Kind, wiring: Wiring) -> None:
        settings, engine, timing = wiring.settings, wiring.engine, wiring.timing
        self.kind, self.settings = kind, settings
        retention = settings.retention_s if kind.retention else None
        self.store = Store(wiring.database, Path(settings.data_dir), retention, kind=kind.plural, record=kind.record)
        self.webhooks = WebhookSender(
            wiring.secret,
            throttle_s=timing.throttle_s,
            backoff_s=timing.backoff_s,
            timeout_s=timing.timeout_s,
            block_private_urls=settings.block_private_urls,
            render=self.render,
            journal=self.store,
        )
        observer = wiring.metrics.observer(kind.noun)
        self.dispatcher = kind.dispatcher(
            engine, self.store, self.webhooks, kind.capacity(engine), observer, wiring.registry
        )
        self.deadlines = Deadlines(self._cancel_late)
        self._extras: list[Callable[[Prediction, str], dict[str, Any]]] = []

    def render(self, run: Prediction, base_url: str | None = None, listing: bool = False) -> dict[str, Any]:
        """The run as the API returns it. With MUSICGEN_OUTPUT=data-uri the output file is inlined, except on a list
        page (a page of long outputs inlined is gigabytes)."""
        inline = self.settings.output == "data-uri" and not listing and self.kind.record.INLINE_OUTPUT
        out = run.to_json(base_url, self.store.prediction_dir(run.id) if inline else None)
        for extra in self._extras:
            out["urls"].update(extra(run, base_url or run.base_url))
        return out

    def add_urls(self, extra: Callable[[Prediction, str], dict[str, Any]]) -> None:
        """extra(run, base_url) -> more `urls` every rendering of this kind carries (a prediction's stream)."""
        self._extras.append(extra)

    def _cancel_late(self, run_id: str) -> None:  # a Cancel-After deadline passed: what POST .../cancel does
        run = self.store.get(run_id)
        if run is not None:
            self.dispatcher.cancel(run)

    def start(self) -> None:
        self.webhooks.resume()  # before the dispatcher starts, whose own `completed` webhooks are kept anew
        self.dispatcher.start()
        self.deadlines.restore(self.store.unfinished_runs())
        self.deadlines.start()

    def drain(self, grace_s: float) -> None:
        self.dispatcher.drain(grace_s if self.kind.waits_at_shutdown else 0)


class RunStacks:
    """Every kind's stack, built from `KINDS`."""

    def __init__(self, wiring: Wiring, kinds: tuple[Kind, ...] = KINDS) -> None:
        self.settings, self.secret = wiring.settings, wiring.secret
        self._stacks = {kind.noun: RunStack(kind, wiring) for kind in kinds}

    def __getitem__(self, noun: str) -> RunStack:
        return self._stacks[noun]

    def __iter__(self) -> Iterator[RunStack]:
        return iter(self._stacks.values())

    @property
    def accepting(self) -> bool:
        """False once a drain began: creates of every kind answer 503."""
        return all(stack.dispatcher.accepting for stack in self)

    def start(self) -> None:
        for stack in self:
            stack.start()

    def drain(self) -> None:
        """Refuse creates of every kind, let running ones finish (as long as their kind waits), keep the rest for
        the next start. The kinds drain side by side."""
        threads = [threading.Thread(target=s.drain, args=(self.settings.shutdown_grace,)) for s in self]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def drain_webhooks(self, timeout: float) -> None:
        for stack in self:
            stack.webhooks.drain(timeout=timeout)

    def stop(self) -> None:
        """At the app's shutdown: deadlines stop, runs drain, webhook senders close."""
        for stack in self:
            stack.deadlines.stop()
        self.drain()
        for stack in self:
            stack.webhooks.close()
