"""Trainings are device work, one per device at a time: with two devices two trainings run at once, each on its own
device's loop; with one, the second waits for the first."""

from __future__ import annotations

import threading

import pytest

from musicgen_local.engine.api import Failed, Log, Progress, Trained, TrainingRequest
from musicgen_local.engine.local import LocalEngine
from musicgen_local.training.params import parse_training_input
from tests.training_helpers import QUICK_TRAINING, songs_zip


def _timeline(engine: LocalEngine, tmp_path) -> list[tuple[int, str]]:
    """Both trainings' Progress and Trained events, in the order they happened: (which, event name)."""
    dataset = songs_zip(tmp_path / "songs.zip")
    params = parse_training_input({**QUICK_TRAINING, "dataset_path": str(dataset), "updates_per_epoch": 6})
    runs = [
        engine.train(TrainingRequest(params, str(dataset), str(tmp_path / f"work{i}"), str(tmp_path / f"out{i}.tar")))
        for i in range(2)
    ]
    seen, lock = [], threading.Lock()

    def follow(i: int) -> None:
        for event in runs[i]:
            if isinstance(event, Progress | Trained | Failed):
                with lock:
                    name = f"Failed: {event.message}" if isinstance(event, Failed) else type(event).__name__
                    seen.append((i, name))

    threads = [threading.Thread(target=follow, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert [name for _, name in seen].count("Trained") == 2, [e for e in seen if e[1] != "Progress"]
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("devices", ["cpu,cpu", "cpu"])
def test_two_devices_train_two_trainings_at_once_one_device_one_after_the_other(settings, tmp_path, devices):
    engine = LocalEngine(settings.with_(devices=devices, warmup="none", data_dir=tmp_path / "data"))
    try:
        seen = _timeline(engine, tmp_path)
    finally:
        engine.close()
    first_end = seen.index(next(e for e in seen if e[1] == "Trained"))
    both_moved_before = {i for i, name in seen[:first_end] if name == "Progress"} == {0, 1}
    assert engine.training_capacity == len(devices.split(","))
    assert both_moved_before == (devices == "cpu,cpu"), seen


@pytest.mark.slow
def test_a_running_training_holds_its_estimated_memory_in_the_device_plan(settings, tmp_path):
    engine = LocalEngine(settings.with_(devices="cpu", warmup="none", data_dir=tmp_path / "data"))
    try:
        dataset = songs_zip(tmp_path / "songs.zip")
        params = parse_training_input({**QUICK_TRAINING, "dataset_path": str(dataset)})
        run = engine.train(TrainingRequest(params, str(dataset), str(tmp_path / "work"), str(tmp_path / "out.tar")))
        while_training, logs = None, []
        for event in run:
            if isinstance(event, Log):
                logs.append(event.line)
            if isinstance(event, Progress) and while_training is None:
                while_training = engine.health()["devices"][0]["memory"]["shared_bytes"]
            assert not isinstance(event, Failed), event.message
        after = engine.health()["devices"][0]["memory"]["shared_bytes"]
    finally:
        engine.close()
    assert while_training["training"] > 1_000_000, while_training
    assert "training" not in after, after
    assert any(line.startswith("Training memory on cpu, estimated:") for line in logs), logs
