"""Faults injected on CPU reach as far as they must: out of memory fails only the requests that needed the
memory and the device goes on; an unrecoverable device error ends what ran with a message that says so,
ends what had not started as `kind="device"` (a server keeps those for its restart), turns health UNHEALTHY
and sets the engine's `lost` event; whatever is submitted after that fails at once."""

from __future__ import annotations

import pytest
import torch

from musicgen_local.engine.api import Done, Failed, Request, Started
from musicgen_local.engine.fast.model import StaticLM
from musicgen_local.engine.local import LocalEngine

ILLEGAL_ADDRESS = (
    "CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be asynchronously "
    "reported at some other API call, so the stacktrace below might be incorrect."
)


def inject(monkeypatch, error: Exception, after: int, times: int = 1) -> list[int]:
    """The decode step raises `error` from its `after`-th call on, `times` times (what torch raises there)."""
    calls = []
    original = StaticLM.step

    def step(self, *args, **kwargs):
        calls.append(1)
        if after <= len(calls) < after + times:
            raise error
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StaticLM, "step", step)
    return calls


def events(run) -> list:
    return list(run)


@pytest.fixture
def engine(settings):
    """One slot (a second request waits for it), `large` loaded and checked before a fault is injected."""
    engine = LocalEngine(settings.with_(max_batch=1, warmup="large"))
    engine.wait_ready()
    yield engine
    engine.close()


def test_out_of_memory_fails_the_batch_that_needed_it_and_the_device_goes_on(engine, monkeypatch):
    inject(monkeypatch, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), after=5)
    first = events(engine.submit(Request(model_version="large", prompt="a", duration=1, seed=1)))
    assert isinstance(first[-1], Failed) and first[-1].kind == "internal"
    assert first[-1].message.startswith("Out of memory on cpu while decoding a batch of 1 large requests")
    assert "MUSICGEN_MAX_BATCH" in first[-1].message

    second = events(engine.submit(Request(model_version="large", prompt="a", duration=1, seed=1)))
    assert isinstance(second[-1], Done)
    health = engine.health()
    assert health["status"] == "READY" and health["devices"][0]["out_of_memory_errors"] == 1
    assert not engine.lost.is_set()


def test_an_unrecoverable_device_error_fails_what_ran_keeps_what_waited_and_turns_unhealthy(engine, monkeypatch):
    inject(monkeypatch, RuntimeError(ILLEGAL_ADDRESS), after=10, times=10**9)  # a poisoned context stays poisoned
    running = iter(engine.submit(Request(model_version="large", prompt="a", duration=2, seed=1)))
    ran = []
    while not any(isinstance(e, Started) for e in ran):
        ran.append(next(running))
    waiting = engine.submit(Request(model_version="large", prompt="b", duration=2, seed=2))  # one slot: it waits

    ran, waited = ran + list(running), events(waiting)
    assert isinstance(ran[-1], Failed) and ran[-1].kind == "internal"
    assert "cpu failed with an unrecoverable error" in ran[-1].message and "illegal memory access" in ran[-1].message
    assert "restarted" in ran[-1].message
    assert not any(isinstance(e, Started) for e in waited)
    assert isinstance(waited[-1], Failed) and waited[-1].kind == "device"

    assert engine.lost.wait(5)
    health = engine.health()
    assert health["status"] == "UNHEALTHY" and "illegal memory access" in health["error"]
    assert health["devices"][0]["status"] == "UNHEALTHY"
    later = events(engine.submit(Request(model_version="large", prompt="c", duration=1, seed=3)))
    assert isinstance(later[-1], Failed) and later[-1].kind == "device"


def test_an_ordinary_bug_in_the_step_fails_its_batch_only(engine, monkeypatch):
    inject(monkeypatch, RuntimeError("shape mismatch in some kernel"), after=3)
    first = events(engine.submit(Request(model_version="large", prompt="a", duration=1, seed=1)))
    assert isinstance(first[-1], Failed) and "Internal error while generating (RuntimeError)" in first[-1].message
    assert isinstance(events(engine.submit(Request(model_version="large", prompt="a", duration=1, seed=1)))[-1], Done)
    assert engine.health()["status"] == "READY"


def test_an_unrecoverable_error_while_a_model_loads_loses_the_device_too(settings, monkeypatch):
    """The model's self-check steps hit it: its request never started, so it ends `kind="device"`."""
    inject(monkeypatch, RuntimeError(ILLEGAL_ADDRESS), after=1, times=10**9)
    engine = LocalEngine(settings.with_(warmup="none"))
    try:
        ended = events(engine.submit(Request(model_version="large", prompt="a", duration=1, seed=1)))
        assert not any(isinstance(e, Started) for e in ended)
        assert isinstance(ended[-1], Failed) and ended[-1].kind == "device"
        assert "unrecoverable" in ended[-1].message
        assert engine.lost.wait(5) and engine.health()["status"] == "UNHEALTHY"
    finally:
        engine.close()


def test_an_internal_error_names_its_kind_but_not_its_text():
    """An exception's text may name this server's files (an OSError's path); the message says what kind it was and
    where to look, the server's log keeps the rest."""
    from musicgen_local.engine.api import failure

    event = failure(FileExistsError(17, "File exists", "/srv/musicgen/data/trainings/abc/work/dataset/a"))
    assert event.kind == "internal" and "/srv/musicgen" not in event.message
    assert event.message == "Internal error while generating (FileExistsError); see the server log."
