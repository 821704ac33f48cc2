"""A training on a device loop: the loop that owns the GPU runs it one unit at a time between decode steps.

Why interleave rather than give training a device of its own: on the one-GPU box most users have,
a training that took the device would stop every prediction for an hour; one unit of training (a
micro-batch, or encoding one piece) between decode steps keeps predictions flowing at a cost the
user chose by training. With several devices the engine puts a training on the least loaded one,
and the others serve as before.

The stages: the dataset is fetched and cut into pieces in the training pool (never on the loop,
never in the prepare pool predictions need); the base checkpoint is read by the loader pool; the
loop builds the trainer's own copy of the model (a full fine-tune changes its weights, and
training wants float32 weights where serving keeps float16), then calls `Trainer.work` once per
turn. One training runs on a device at a time; others wait their turn in order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .api import Canceled, Log, Progress, Trained, TrainingRequest
from .run import EventQueue

log = logging.getLogger(__name__)


@dataclass(eq=False)
class TrainJob:
    request: TrainingRequest
    run: EventQueue
    params: Any  # training.params.TrainingInput
    pieces: list  # training.dataset.Piece
    reading: bool = False  # the loader pool reads the base checkpoint
    trainer: Any = None
    work: Iterator | None = None
    last_logged: float = 0.0

    def log(self, line: str) -> None:
        self.run.emit(Log(line))


@dataclass
class TrainRead:
    """The loader pool's answer for a training: the base checkpoint in host memory, or why not."""

    job: TrainJob
    host: Any = None
    error: Exception | None = None


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


def advance(job: TrainJob) -> bool:
    """One unit of the job's training; True when it has ended (Trained or Canceled emitted)."""
    if job.run.canceled.is_set():
        job.run.emit(Canceled())
        return True
    try:
        with torch.inference_mode(False):
            progress = next(job.work)
    except StopIteration:
        return finish(job)
    if progress is not None:
        job.run.emit(Progress(progress.step, progress.total, progress.loss))
        job.log(describe(progress))
    return False


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


def finish(job: TrainJob) -> bool:
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
    job.run.emit(Trained(str(dest), written.kind, written.base, metrics))
    return True
