"""Predictions come first on a device that trains: while a prediction decodes, a training gets units only within its
share of the loop's time (MUSICGEN_TRAINING_SHARE), then runs at full speed once the prediction is done. Before, the
loop ran one training unit after every decode step, so a prediction of N steps waited N training units (a 0.34 s
prediction took 64 s beside a training). Counted here in the training's own updates, not timed; the latency is
measured by `python -m bench.beside_training`."""

from __future__ import annotations

import threading

import pytest

from musicgen_local.engine.api import Done, Progress, Request, Started, TrainingRequest
from musicgen_local.engine.local import LocalEngine
from musicgen_local.training.params import parse_training_input
from tests.training_helpers import QUICK_TRAINING, songs_zip


@pytest.mark.slow
def test_a_prediction_beside_a_training_waits_for_few_of_its_updates(settings, tmp_path):
    engine = LocalEngine(settings.with_(warmup="large", data_dir=tmp_path / "data"))
    engine.wait_ready()
    dataset = songs_zip(tmp_path / "songs.zip")
    params = parse_training_input({**QUICK_TRAINING, "dataset_path": str(dataset), "updates_per_epoch": 400})
    training = engine.train(TrainingRequest(params, str(dataset), str(tmp_path / "work"), str(tmp_path / "out.tar")))
    updates, training_ended = [0], threading.Event()

    def follow() -> None:
        for event in training:
            if isinstance(event, Progress):
                updates[0] = event.done
        training_ended.set()

    threading.Thread(target=follow, daemon=True).start()
    try:
        while updates[0] < 3:  # the training is under way (its pieces encoded, updates running)
            assert not training_ended.is_set()
            threading.Event().wait(0.05)
        run = engine.submit(Request(model_version="large", prompt="piano", duration=2, seed=1))  # 103 decode steps
        events = iter(run)
        assert any(isinstance(e, Started) for e in events)
        before = updates[0]
        assert isinstance(list(events)[-1], Done)
        during = updates[0] - before
        assert during < 20, f"{during} training updates ran while a 103-step prediction decoded"
        moved = updates[0]
        while updates[0] == moved:  # with the device to itself again, the training goes on
            assert not training_ended.is_set()
            threading.Event().wait(0.05)
    finally:
        training.cancel()
        training_ended.wait(60)
        engine.close()
