"""Trainings on a device loop: the loop that owns the GPU runs them one unit at a time, in the gaps of decoding.

Why on the loop rather than a device of their own: on the one-GPU box most users have, a training that took the
device would stop every prediction for an hour. Predictions come first: while any decodes or waits on this device,
the training gets a unit only while its time stays under MUSICGEN_TRAINING_SHARE of the loop's (so a prediction
keeps its speed, and a training under steady traffic still moves); when nothing else runs, it runs unit after unit.
With several devices the engine puts a training on the least loaded one, and the others serve as before.

The stages: the dataset is fetched and cut into pieces in the training pool (never on the loop); the base
checkpoint is read by the loader pool; the loop builds the trainer's own copy of the model (a full fine-tune changes
its weights, and training wants float32 weights where serving keeps float16), then calls `Trainer.work` once per
unit. One training runs on a device at a time; others wait their turn in order.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .api import Canceled, Event, Log, Progress, Trained, TrainingRequest
from .faults import free_cached
from .residency import ModelKey, Residency
from .run import EventQueue

log = logging.getLogger(__name__)
TRAINING = "training"  # the running training's entry in the device plan's shared bytes


@dataclass(eq=False)
class TrainJob:
    request: TrainingRequest
    run: EventQueue
    pieces: list  # training.dataset.Piece
    reading: bool = False  # the loader pool reads the base checkpoint
    trainer: Any = None
    work: Iterator | None = None

    @property
    def params(self):  # training.params.TrainingInput, parsed once at the front door
        return self.request.params

    def log(self, line: str) -> None:
        self.run.emit(Log(line))


@dataclass
class TrainRead:
    """The loader pool's answer for a training: the base checkpoint in host memory, or why not."""

    job: TrainJob
    host: Any = None
    error: Exception | None = None


class Trainings:
    """The trainings a device loop holds, in order; the first one trains."""

    def __init__(
        self,
        device: str,
        share: float,
        residency: Residency,
        read: Callable[[ModelKey], Any],
        build: Callable[[Any, str], Any],
        loader_pool: Executor,
        deliver: Callable[[TrainRead], None],
        end: Callable[[TrainJob, Event], None],
    ) -> None:
        """end(job, terminal event): how the loop ends a job (its event emitted, the device's count of jobs)."""
        self.device, self.share, self.residency = device, share, residency
        self._read, self._build, self._loader_pool, self._deliver, self._end = read, build, loader_pool, deliver, end
        self.queue: deque[TrainJob] = deque()
        self._busy_since: float | None = None  # when predictions began to need the loop (this stretch)
        self._spent = 0.0  # seconds of training units since then

    def add(self, job: TrainJob) -> None:
        self.queue.append(job)

    def __len__(self) -> int:
        return len(self.queue)

    @property
    def ready(self) -> bool:
        """The first training has a unit to run, or its model to ask for (the loop is not idle)."""
        return bool(self.queue) and (self.queue[0].work is not None or not self.queue[0].reading)

    def take_all(self) -> list[TrainJob]:
        """Every training here, forgotten (for a device that failed)."""
        jobs = list(self.queue)
        self.queue.clear()
        return jobs

    def turn(self, predictions_busy: bool) -> None:
        """The training's share of one turn of the loop: start reading its model, or one unit if it is due."""
        for waiting in [j for j in list(self.queue)[1:] if j.run.canceled.is_set()]:  # no need to wait their turn
            self._ended(waiting, Canceled())
        if not self.queue:
            return
        job = self.queue[0]
        if job.work is None:
            self._start_reading(job)
        elif self._due(predictions_busy):
            started = time.monotonic()
            try:
                self._unit(job)
            finally:
                self._spent += time.monotonic() - started

    def _due(self, predictions_busy: bool) -> bool:
        if not predictions_busy:
            self._busy_since, self._spent = None, 0.0
            return True
        now = time.monotonic()
        if self._busy_since is None:
            self._busy_since = now
        return self._spent <= self.share * (now - self._busy_since)

    def _start_reading(self, job: TrainJob) -> None:
        if job.run.canceled.is_set():
            self._ended(job, Canceled())
        elif not job.reading:
            job.reading = True
            job.log(f"Loading {job.params.model_version} for training...")
            self._loader_pool.submit(self._read_in_pool, job)

    def _read_in_pool(self, job: TrainJob) -> None:
        try:
            self._deliver(TrainRead(job, host=self._read(ModelKey(job.params.model_version))))
        except Exception as exc:  # noqa: BLE001 - reported to the training
            self._deliver(TrainRead(job, error=exc))

    def read_done(self, read: TrainRead) -> None:
        """Build the trainer's own copy of the model (outside inference mode: it is trained)."""
        job = read.job
        if job not in self.queue:  # ended while its checkpoint was read
            return
        if job.run.canceled.is_set():  # building the trainer's model (and resuming it) is wasted on it
            self._ended(job, Canceled())
            return
        try:
            if read.error is not None:
                raise read.error
            if torch.device(self.device).type == "cuda":  # room for it: idle models go first
                self.residency.evict_idle("(room for a training)")
            with torch.inference_mode(False):
                model = self._build(read.host, self.device)
                start_trainer(job, model, self.device, read.host)
            self._count_in_plan(job, model)
        except Exception as exc:  # noqa: BLE001 - the training fails alone
            self._ended(job, self.residency.faults.contain(exc, f"loading {job.params.model_version} for training"))

    def _count_in_plan(self, job: TrainJob, model) -> None:
        """The training's device bytes, estimated (training.memory), held in the device's plan while it runs: a model
        placed beside it finds them taken, and /health-check shows them."""
        from ..training.memory import sizes_of, training_bytes
        from .memory import gib, module_bytes

        other = module_bytes(model.compression_model) + module_bytes(model.lm.condition_provider)
        cuda = torch.device(self.device).type == "cuda"
        need = training_bytes(sizes_of(model.lm, other), job.params, cuda=cuda, micro_batch=job.trainer.micro)
        self.residency.memory.shared[TRAINING] = need.total
        job.log(
            f"Training memory on {self.device}, estimated: {gib(need.total)} (weights {gib(need.weights)}, "
            f"trained parameters with their gradients and moments {gib(need.trained)}, "
            f"activations {gib(need.activations)})."
        )

    def _unit(self, job: TrainJob) -> None:
        try:
            event = advance(job)
        except Exception as exc:  # noqa: BLE001 - the training fails alone; predictions go on
            p = job.params
            event = self.residency.faults.contain(exc, f"training {p.model_version} at batch {p.batch_size}")
        if event is not None:
            self._ended(job, event)

    def _ended(self, job: TrainJob, event: Event | Exception) -> None:
        """`event`: the terminal event, or the exception that ended the training."""
        if job in self.queue:
            self.queue.remove(job)
        if job.trainer is not None:  # the training that ran (the others only waited)
            self.residency.memory.shared.pop(TRAINING, None)
        job.trainer = job.work = None
        free_cached(self.device)
        self._end(job, event)


def start_trainer(job: TrainJob, model, device: str, host) -> None:
    """The trainer on the model built for it; its work resumes from `work_dir` when a checkpoint is there."""
    from ..training.trainer import Trainer

    compression = next((pkg for (kind, _), pkg in host.packages.items() if kind == "compression"), None)
    job.trainer = Trainer(
        model,
        job.pieces,
        job.params,
        Path(job.request.work_dir) / "checkpoints",
        log=job.log,
        compression_package=compression,
    )
    job.work = job.trainer.work()
    job.log(
        f"Training {job.params.model_version} on {device}: "
        f"{'LoRA rank ' + str(job.params.lora_rank) if job.params.lora_rank else 'full fine-tune'}, "
        f"{len(job.pieces)} pieces, {job.params.epochs} epochs of {job.params.updates_per_epoch} updates "
        f"at batch {job.params.batch_size}."
    )


def advance(job: TrainJob) -> Event | None:
    """One unit of the job's training; its terminal event (Trained or Canceled) once it has ended."""
    if job.run.canceled.is_set():
        return Canceled()
    try:
        with torch.inference_mode(False):
            progress = next(job.work)
    except StopIteration:
        return finish(job)
    if progress is not None:
        job.run.emit(Progress(progress.step, progress.total, progress.loss))
        job.log(describe(progress))
    return None


def describe(p) -> str:
    left = f", {_duration(p.eta_s)} left" if p.eta_s is not None else ""
    return (
        f"step {p.step}/{p.total} (epoch {p.epoch}/{p.epochs}): loss {p.loss:.4f}, lr {p.lr:.2e}, "
        f"{_duration(p.elapsed_s)} elapsed{left}"
    )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def finish(job: TrainJob) -> Trained:
    from .. import tuned

    start = time.monotonic()
    dest = job.trainer.save(Path(job.request.weights_out))
    written = tuned.read(dest, unpack_to=Path(job.request.work_dir) / "unpacked")
    job.log(
        f"Wrote the {written.kind} fine-tune ({dest.stat().st_size / 2**20:.1f} MiB) in "
        f"{time.monotonic() - start:.1f}s."
    )
    metrics = {
        k: float(v) for k, v in written.training.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    return Trained(str(dest), written.kind, written.base, metrics)
