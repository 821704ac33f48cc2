"""The memory plan with an injected device budget (MUSICGEN_DEVICE_MEMORY), on CPU: a budget for one model
makes the second evict the first; a model that needs more than the whole budget fails with a message
that names the setting; a batch never grows past what fits; a model that would fit only once a busy one
is done waits for it instead of failing."""

from __future__ import annotations

import pytest

from musicgen_local.engine.api import Done, Failed, Log, Request, Started
from musicgen_local.engine.local import LocalEngine
from musicgen_local.engine.memory import MARGIN_FRACTION

MONO, STEREO = "large", "stereo-melody-large"


@pytest.fixture(scope="module")
def footprints(settings) -> dict[str, dict]:
    """What each tiny model takes in an unconstrained plan (its own bytes, as /health-check shows them)."""
    engine = LocalEngine(settings.with_(warmup=f"{MONO},{STEREO}"))
    engine.wait_ready()
    models = engine.health()["devices"][0]["memory"]["models"]
    engine.close()
    assert set(models) == {MONO, STEREO} and all(m["slots"] == 8 for m in models.values())
    return models


def budget_for(usable: int) -> int:
    """The MUSICGEN_DEVICE_MEMORY that leaves `usable` bytes once the margin is kept back."""
    return int(usable / (1 - MARGIN_FRACTION)) + 1


def request(model_version: str, duration: int = 1, seed: int = 1) -> Request:
    return Request(model_version=model_version, prompt="piano", duration=duration, seed=seed)


def last(run):
    return list(run)[-1]


def test_a_budget_for_one_model_makes_the_second_evict_the_first(settings, footprints):
    total = {v: m["total_bytes"] for v, m in footprints.items()}
    one_and_a_half = max(total.values()) + min(total.values()) // 2
    engine = LocalEngine(settings.with_(warmup="none", device_memory=budget_for(one_and_a_half)))
    try:
        for model_version in (MONO, STEREO, MONO):
            assert isinstance(last(engine.submit(request(model_version))), Done)
            device = engine.health()["devices"][0]
            assert device["resident_models"] == [model_version]
            assert device["memory"]["models"][model_version]["slots"] == 8
            assert device["memory"]["used_bytes"] <= device["memory"]["budget_bytes"] - device["memory"]["margin_bytes"]
        assert device["model_loads"] == 3
    finally:
        engine.close()


def test_a_model_beyond_the_whole_budget_fails_naming_the_setting(settings):
    engine = LocalEngine(settings.with_(warmup="none", device_memory=100 * 2**20))
    try:
        event = last(engine.submit(request(MONO)))
        assert isinstance(event, Failed) and event.kind == "internal"
        assert f"`{MONO}` needs" in event.message and "MUSICGEN_DEVICE_MEMORY" in event.message
        assert "95.00 MiB (MUSICGEN_DEVICE_MEMORY 100.00 MiB, less a 5.00 MiB margin)" in event.message
        assert engine.health()["status"] == "READY"  # nothing else is wrong with the device
    finally:
        engine.close()


def test_a_batch_never_grows_past_what_fits(settings, footprints):
    mono = footprints[MONO]
    fits = mono["total_bytes"] - 5 * mono["slot_bytes"] - mono["slot_bytes"] // 2  # about 3 of the 8 slots
    engine = LocalEngine(settings.with_(warmup="none", device_memory=budget_for(fits)))
    try:
        runs = [engine.submit(request(MONO, duration=2, seed=i)) for i in range(6)]
        outcomes = [list(run) for run in runs]
        slots = engine.health()["devices"][0]["memory"]["models"][MONO]["slots"]
    finally:
        engine.close()
    assert 1 <= slots < 8
    assert all(isinstance(events[-1], Done) for events in outcomes)
    lines = [e.line for events in outcomes for e in events if isinstance(e, Log)]
    assert any(f"decodes at most {slots} requests at once" in line and "MUSICGEN_MAX_BATCH=8" in line for line in lines)
    batches = [int(line.split()[-2]) for line in lines if line.startswith("Decoding in a batch of")]
    assert batches and max(batches) <= slots


def test_a_model_that_fits_only_alone_waits_for_the_busy_one(settings, footprints):
    total = {v: m["total_bytes"] for v, m in footprints.items()}
    engine = LocalEngine(settings.with_(warmup="none", device_memory=budget_for(max(total.values()) + 1)))
    try:
        busy = engine.submit(request(MONO, duration=3, seed=1))
        events = iter(busy)
        assert any(isinstance(e, Started) for e in events)  # MONO is decoding now
        second = list(engine.submit(request(STEREO, seed=2)))
        first = list(events)
        assert isinstance(first[-1], Done) and isinstance(second[-1], Done)
        assert engine.health()["devices"][0]["resident_models"] == [STEREO]
    finally:
        engine.close()


def test_two_models_waiting_for_the_same_room_both_get_it_in_turn(settings, footprints):
    """While one model decodes, two others are read and wait for its room; neither waits for the other."""
    total = {v: m["total_bytes"] for v, m in footprints.items()}
    engine = LocalEngine(settings.with_(warmup="none", device_memory=budget_for(max(total.values()) + 1)))
    try:
        busy = iter(engine.submit(request(MONO, duration=3, seed=1)))
        assert any(isinstance(e, Started) for e in busy)
        others = [engine.submit(request(v, seed=2)) for v in (STEREO, "stereo-large")]
        assert [type(list(run)[-1]) for run in others] == [Done, Done]
        assert isinstance(list(busy)[-1], Done)
    finally:
        engine.close()


def test_a_full_fine_tune_between_its_windows_is_not_evicted_for_a_waiting_model(settings, footprints, tmp_path):
    """A full fine-tune is a model of its own (`large@<folder>`). Between two windows of its request it decodes
    nothing, but its request waits for it: a model waiting for room must not evict it then (it did: the job found
    its model gone, and every job on the device failed)."""
    from tests.engine.conftest import write_full_tune

    full = str(write_full_tune(settings, MONO, tmp_path))
    total = {v: m["total_bytes"] for v, m in footprints.items()}
    engine = LocalEngine(settings.with_(warmup="none", device_memory=budget_for(max(total.values()) + 1)))
    try:
        long = iter(engine.submit(Request(model_version=MONO, prompt="piano", duration=35, seed=1, weights=full)))
        assert any(isinstance(e, Started) for e in long)  # the fine-tune decodes its first window
        waiting = list(engine.submit(request(STEREO, seed=2)))  # read, then waits for the fine-tune's room
        first = list(long)
        assert isinstance(first[-1], Done), first[-1]
        assert isinstance(waiting[-1], Done), waiting[-1]
    finally:
        engine.close()
