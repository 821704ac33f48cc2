"""A canceled training ends `Canceled`, at once, at every stage (issue 31, item 5): while its dataset downloads or
decodes (each dataset step looks at the cancel), while its base is read (the trainer is not built for it), while it
waits behind another training, and while it trains (tests/server/test_training_restart.py, on a real server)."""

from __future__ import annotations

import itertools
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from musicgen_local.engine.api import Canceled, Failed, Started, TrainingRequest
from musicgen_local.engine.local import LocalEngine
from musicgen_local.engine.run import EventQueue
from musicgen_local.engine.training_job import Trainings, TrainJob, TrainRead
from musicgen_local.training.params import parse_training_input
from tests.training.test_dataset_limits import SilentServer
from tests.training_helpers import QUICK_TRAINING, songs_zip


@pytest.fixture
def engine(settings, tmp_path):
    engine = LocalEngine(settings.with_(warmup="none", data_dir=tmp_path / "data"))
    yield engine
    engine.close()


def _train(engine: LocalEngine, dataset: str, work: Path) -> EventQueue:
    params = parse_training_input({**QUICK_TRAINING, "dataset_path": dataset})
    return engine.train(TrainingRequest(params, dataset, str(work), str(work.parent / "weights.tar")))


def _ending(run: EventQueue, timeout: float = 30.0):
    """The run's terminal event, or None if none came within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        event = run.next_event(timeout=left)
        if isinstance(event, Canceled | Failed) or (event is not None and type(event).__name__ == "Trained"):
            return event
    return None


def test_a_cancel_while_the_dataset_downloads_ends_it_canceled(engine, tmp_path):
    """It ended `failed` ("`dataset_path` could not be downloaded: Prediction was canceled.")."""
    silent = SilentServer()
    try:
        run = _train(engine, silent.url, tmp_path / "t" / "work")
        assert isinstance(run.next_event(timeout=30), Started)
        time.sleep(0.5)  # the download has begun, and waits on a server that never answers
        run.cancel()
        assert isinstance(_ending(run), Canceled)
    finally:
        silent.close()
    assert not (tmp_path / "t" / "work" / "dataset").exists()


def test_a_cancel_while_a_file_decodes_ends_it_canceled(engine, tmp_path, monkeypatch):
    """It took 167 s to take effect: no step of the dataset's preparation looked at the cancel. Here the decode
    never ends by itself (an ffmpeg that hangs)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    started = bin_dir / "started"
    (bin_dir / "ffmpeg").write_text(f"#!/bin/sh\ntouch {started}\nexec sleep 600\n")
    (bin_dir / "ffmpeg").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    run = _train(engine, str(songs_zip(tmp_path / "songs.zip")), tmp_path / "t" / "work")
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline, "the decode never started"
        time.sleep(0.05)
    run.cancel()
    assert isinstance(_ending(run), Canceled)
    assert not (tmp_path / "t" / "work" / "dataset").exists()


class _Fixture:
    """A device's Trainings with a loader that reads at once and a build that records its calls."""

    def __init__(self) -> None:
        self.built, self.ended = [], []
        residency = SimpleNamespace(faults=SimpleNamespace(contain=lambda exc, doing: exc), evict_idle=lambda why: None)
        self.trainings = Trainings(
            "cpu",
            0.1,
            residency,
            read=lambda key: "host copy",
            build=lambda host, device: self.built.append(host),
            loader_pool=ThreadPoolExecutor(1),
            deliver=lambda read: None,
            end=lambda job, event: (self.ended.append((job, event)), job.run.emit(event)),
        )

    def job(self) -> TrainJob:
        params = SimpleNamespace(model_version="large")
        return TrainJob(SimpleNamespace(params=params, work_dir="/nonexistent"), EventQueue(), pieces=[])


def test_a_training_canceled_while_its_base_is_read_is_not_built():
    """Once its checkpoint is read, a canceled training ends there: the trainer's copy of the model is not built
    (nor its checkpoint resumed), which is minutes for `large`."""
    fixture = _Fixture()
    job = fixture.job()
    fixture.trainings.add(job)
    job.reading = True  # the loader pool has it
    job.run.cancel()
    fixture.trainings.read_done(TrainRead(job, host="host copy"))
    assert fixture.built == [] and [type(e).__name__ for _, e in fixture.ended] == ["Canceled"]
    assert len(fixture.trainings) == 0


def test_a_training_canceled_while_it_waits_behind_another_ends_at_once():
    """One training runs on a device at a time; one canceled while waiting its turn does not wait for it."""
    fixture = _Fixture()
    first, second = fixture.job(), fixture.job()
    first.work = itertools.repeat(None)  # training: a unit at each turn, never done
    first.reading = True
    for job in (first, second):
        fixture.trainings.add(job)
    second.run.cancel()
    fixture.trainings.turn(predictions_busy=True)
    assert [(j, type(e).__name__) for j, e in fixture.ended] == [(second, "Canceled")]
    assert list(fixture.trainings.queue) == [first]
