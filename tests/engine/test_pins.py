"""Deployments' pins (`keep` / `let_go`) on the real engine, tiny weights, and a device budget for one model at a
time: a pinned model is resident before anyone asks for it and stays there; what does not fit beside it is refused
at once with what it needs and what the pins keep, instead of evicting it or waiting for it forever; a deployment
moved to another model stays warm until the new one is resident; let go, its model is an idle one again."""

from __future__ import annotations

import pytest

from musicgen_local.engine.api import Done, Failed
from musicgen_local.engine.local import LocalEngine
from musicgen_local.errors import EngineError, UserError
from tests.engine.test_memory_plan import MONO, STEREO, budget_for, footprints, last, request

__all__ = ["footprints"]  # the module fixture, shared with the memory plan's tests
PIN_S = 120  # reading and placing a tiny model on a busy 2-core machine


@pytest.fixture
def one_at_a_time(settings, footprints):
    """An engine whose plan has room for one of the tiny models at a time."""
    total = {v: m["total_bytes"] for v, m in footprints.items()}
    engine = LocalEngine(settings.with_(warmup="none", device_memory=budget_for(max(total.values()) + 1)))
    yield engine
    engine.close()


def device(engine: LocalEngine) -> dict:
    return engine.health()["devices"][0]


def test_a_pinned_model_is_loaded_at_once_and_never_evicted_for_another(one_at_a_time):
    engine = one_at_a_time
    note = engine.keep("alice/prod", MONO, None, "cpu").result(PIN_S)
    assert "kept warm for the deployment alice/prod" in note
    assert device(engine)["resident_models"] == [MONO] and device(engine)["model_loads"] == 1  # before any request
    assert device(engine)["pinned"] == {"alice/prod": MONO}
    event = last(engine.submit(request(STEREO)))  # needs the room the pin keeps: refused, not waiting
    assert isinstance(event, Failed), event
    assert (
        f"`{STEREO}` needs" in event.message
        and f"kept resident by deployments ({MONO} for alice/prod:" in event.message
    )
    assert "Set min_instances to 0" in event.message
    assert isinstance(last(engine.submit(request(MONO))), Done)  # the pinned model still serves
    assert device(engine)["resident_models"] == [MONO] and device(engine)["model_loads"] == 1


def test_a_second_pin_that_does_not_fit_is_refused_naming_the_memory_and_the_first_stays(one_at_a_time):
    engine = one_at_a_time
    engine.keep("alice/prod", MONO, None, "cpu").result(PIN_S)
    with pytest.raises(EngineError, match=rf"`{STEREO}` needs [\d.]+ [GM]iB on cpu .* kept resident by deployments"):
        engine.keep("bob/other", STEREO, None, "cpu").result(PIN_S)
    assert device(engine)["pinned"] == {"alice/prod": MONO}
    assert device(engine)["resident_models"] == [MONO]


def test_a_deployment_moved_to_another_model_lets_the_old_one_go_once_the_new_is_resident(settings, footprints):
    """Room for the two models: the old one stays warm while the new one loads, and is idle once it is resident
    (a third model then evicts it rather than being refused)."""
    both = sum(m["total_bytes"] for v, m in footprints.items())
    engine = LocalEngine(settings.with_(warmup="none", device_memory=budget_for(both + 1)))
    try:
        engine.keep("alice/prod", STEREO, None, "cpu").result(PIN_S)
        engine.keep("alice/prod", MONO, None, "cpu").result(PIN_S)
        assert device(engine)["pinned"] == {"alice/prod": MONO}
        assert device(engine)["resident_models"] == [STEREO, MONO]
        event = last(engine.submit(request("stereo-large")))  # needs the room of the model let go
        assert isinstance(event, Done), event
        assert device(engine)["resident_models"] == [MONO, "stereo-large"]
    finally:
        engine.close()


def test_let_go_makes_the_model_idle_again(one_at_a_time):
    engine = one_at_a_time
    engine.keep("alice/prod", MONO, None, "cpu").result(PIN_S)
    engine.let_go("alice/prod")
    assert isinstance(last(engine.submit(request(STEREO))), Done)  # now it evicts the formerly pinned model
    assert device(engine)["pinned"] == {} and device(engine)["resident_models"] == [STEREO]


def test_a_pin_on_a_device_this_server_has_not_is_refused_naming_those_it_has(one_at_a_time):
    with pytest.raises(UserError, match=r"no device 'cuda:3'; it has cpu"):
        one_at_a_time.keep("alice/prod", MONO, None, "cuda:3").result(PIN_S)
    assert one_at_a_time.hardware() == [{"sku": "cpu", "name": "CPU"}]


def test_a_full_fine_tune_pins_its_own_model(settings, tmp_path):
    from tests.engine.conftest import write_full_tune

    full = str(write_full_tune(settings, MONO, tmp_path))
    engine = LocalEngine(settings.with_(warmup="none"))
    try:
        engine.keep("alice/tuned", MONO, full, "cpu").result(PIN_S)
        (pinned,) = device(engine)["pinned"].values()
        assert pinned.startswith(f"{MONO}@") and device(engine)["resident_models"] == [pinned]
        with pytest.raises(UserError, match=f"fine-tune of `{MONO}`; they cannot decode `{STEREO}`"):
            engine.keep("alice/tuned", STEREO, full, "cpu").result(PIN_S)
    finally:
        engine.close()


def test_ray_refuses_to_keep_a_model_warm_and_says_what_works():
    from musicgen_local.engine.ray.client import RayEngine

    engine = object.__new__(RayEngine)  # keep() needs no cluster: it refuses before reaching one
    with pytest.raises(UserError, match="not carried to a Ray cluster .* set min_instances to 0"):
        engine.keep("alice/prod", MONO, None, "ray").result(1)
