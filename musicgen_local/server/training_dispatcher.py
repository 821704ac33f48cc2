"""Trainings into the engine, and a succeeded one into a new version of its destination.

Everything a prediction has (a queue in order, status from the engine's events, logs, signed
webhooks, cancel, Cancel-After, drain, restarts) comes from `Dispatcher`; a training differs in
what it asks the engine (`train`), in how it ends (`Trained`: the registry gets a version whose
weights are the training's tar), and at a restart: it resumes from its last checkpoint instead of
starting over, and a device lost under it keeps it for the restart whatever its status. Once it has ended, however
it ended, its work folder (the dataset's pieces, checkpoints: what resuming needed) is removed; its weights stay.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path

from ..engine.api import Event, Run, Trained, TrainingRequest
from ..registry import Version
from .dispatcher import Dispatcher
from .training import Training

log = logging.getLogger(__name__)


class TrainingDispatcher(Dispatcher):
    NOUN = "training"
    INTERRUPTED_TWICE = (
        "The server stopped twice while this training was running, so it was not resumed a third "
        "time. Create the training again."
    )
    RESTARTED = "The server restarted while this training was running: resuming from its last checkpoint."

    def running_into(self, destination: str) -> str | None:
        """The id of an unfinished training into `destination`, if there is one."""
        return next((t.id for t in self.store.unfinished_runs() if t.destination == destination), None)

    def _submit_to_engine(self, pred: Training) -> Run:  # type: ignore[override]
        return self.engine.train(TrainingRequest.from_record(pred.request))

    def _runs_again_after_device_loss(self, pred: Training) -> bool:  # type: ignore[override]
        return True  # its checkpoint is on disk: the restart resumes it

    def _other(self, pred: Training, event: Event) -> None:  # type: ignore[override]
        if not isinstance(event, Trained):
            return super()._other(pred, event)
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        version = self.registry.add_version(
            Version(
                secrets.token_hex(32),
                pred.destination,
                created,
                base=event.base,
                weights=event.weights,
                kind=event.kind,
                training=pred.id,
            )
        )
        pred.output_version, pred.weights_file = version.id, Path(event.weights).name
        pred.training_metrics = dict(event.metrics)
        self._log(pred, f"New version {pred.destination}:{version.id} ({event.kind} fine-tune of {event.base}).")
        self.webhooks.notify(pred, "output")
        self._finish(pred, "succeeded")

    def _finish(self, pred: Training, status: str, error: str | None = None) -> None:  # type: ignore[override]
        super()._finish(pred, status, error)
        work = (pred.request or {}).get("work_dir")
        folder = self.store.prediction_dir(pred.id)
        if work and Path(work).resolve().is_relative_to(folder.resolve()):  # only ever its own folder's
            # Off the caller's thread: a cancel answers at once, and a dataset's pieces can be gigabytes.
            threading.Thread(target=_remove_work, args=(Path(work), folder), name=f"clean-{pred.id[:8]}").start()


def _remove_work(work: Path, folder: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
    try:
        folder.rmdir()  # nothing else in it: a training that made no weights leaves no folder
    except OSError:
        pass
    log.debug("removed %s", work)
