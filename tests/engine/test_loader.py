"""Only device work on the device loop: while a second model's checkpoint is being read from disk (held
up here on purpose), the batch already running keeps stepping; once read, the model is built and its
request succeeds."""

from __future__ import annotations

import threading

from musicgen_local.engine import local
from musicgen_local.engine.api import Done, Progress, Request


def test_a_running_batch_keeps_stepping_while_a_second_model_is_read(settings, monkeypatch):
    reading, release = threading.Event(), threading.Event()
    real_read = local.read_checkpoint

    def slow_read(settings, key):
        if key.model_version == "stereo-large":
            reading.set()
            assert release.wait(120), "the test never released the read"
        return real_read(settings, key)

    monkeypatch.setattr(local, "read_checkpoint", slow_read)
    engine = local.LocalEngine(settings.with_(warmup="large"))
    engine.wait_ready()
    try:
        progress, moved = [0], threading.Condition()
        running = engine.submit(Request(model_version="large", prompt="long", duration=4, seed=1))

        def follow():
            for event in running:
                if isinstance(event, Progress):
                    with moved:
                        progress[0] = event.done
                        moved.notify_all()
            follow.last = event

        follower = threading.Thread(target=follow)
        follower.start()
        with moved:
            assert moved.wait_for(lambda: progress[0] >= 5, timeout=60)
        second = engine.submit(Request(model_version="stereo-large", prompt="second", duration=1, seed=2))
        assert reading.wait(60)
        at_read = progress[0]
        with moved:  # the read is still held up, and the running request goes on
            assert moved.wait_for(lambda: progress[0] >= at_read + 30, timeout=60), (at_read, progress[0])
        assert not release.is_set()
        release.set()
        assert isinstance(list(second)[-1], Done)
        follower.join(timeout=120)
        assert isinstance(follow.last, Done)
        assert engine.health()["devices"][0]["resident_models"] == ["large", "stereo-large"]
    finally:
        release.set()
        engine.close()


def test_two_devices_warm_up_the_same_model_at_once(settings):
    """A server with two devices warms a model up on both as it starts, each loop building it on its own thread at
    the same moment. transformers' `from_pretrained` (audiocraft's T5 conditioner) changes process-wide state while
    it loads (it makes `tie_weights` a no-op), so two builds at once left one T5's tied embedding on the meta
    device ("Cannot copy out of meta tensor"); both devices must end up holding the model and serving it."""
    engine = local.LocalEngine(settings.with_(devices="cpu,cpu", warmup="large"))
    try:
        assert engine.wait_ready(300)
        health = engine.health()
        assert health["status"] == "READY", health
        assert [d["resident_models"] for d in health["devices"]] == [["large"], ["large"]]
        runs = [engine.submit(Request(model_version="large", prompt="piano", duration=1, seed=s)) for s in (1, 2)]
        assert [type(list(run)[-1]) for run in runs] == [Done, Done]
    finally:
        engine.close()


def test_models_built_at_once_on_several_threads_are_whole(settings):
    """The device stage on three threads released together (as device loops may): each model decodes."""
    from musicgen_local.engine import models
    from musicgen_local.engine.residency import ModelKey

    host = [models.read_checkpoint(settings, ModelKey("large")) for _ in range(3)]
    start, built, errors = threading.Barrier(3), [], []

    def build(i: int) -> None:
        start.wait()
        try:
            built.append(models.build_model(settings, host[i], "cpu"))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=build, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert errors == [] and len(built) == 3
    assert all(not p.is_meta for model in built for p in model.lm.parameters())
