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
