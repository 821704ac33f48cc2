"""Fine-tuned weights through the engine's public interface (`Request.weights`): LoRA fine-tunes decode in
their base model's batch, each request giving byte for byte the audio it gives alone; a full fine-tune
is a model of its own; audiocraft's own loop applies an adapter to its request only; bad weights fail
with a message."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from musicgen_local import tuned
from musicgen_local.engine import Request, load_engine, result_of
from musicgen_local.engine.api import Failed
from musicgen_local.engine.models import load_model
from musicgen_local.training.lora import target_names
from tests.engine.conftest import write_full_tune
from tests.engine.test_batching import Follower

MODEL = "large"


def _random_lora(lm, path: Path, seed: int, rank: int = 4, strength: float = 0.5) -> Path:
    """An adapter on every target, with B far from zero: it changes what the model says."""
    g = torch.Generator().manual_seed(seed)
    params = dict(lm.named_parameters())
    adapters = {}
    for name in target_names(lm):
        out_features, in_features = params[name].shape
        adapters[name] = (
            torch.randn(rank, in_features, generator=g),
            strength * torch.randn(out_features, rank, generator=g),
        )
    return tuned.write_lora(path, MODEL, adapters, alpha=float(rank))


@pytest.fixture(scope="module")
def adapters(settings, tmp_path_factory) -> tuple[Path, Path]:
    lm = load_model(settings, MODEL, "cpu").lm
    folder = tmp_path_factory.mktemp("loras")
    return _random_lora(lm, folder / "one.tar", 1), _random_lora(lm, folder / "two.tar", 2, rank=8)


@pytest.fixture(scope="module")
def lora_engine(settings, tmp_path_factory):
    engine = load_engine(settings.with_(warmup="none", data_dir=tmp_path_factory.mktemp("engine-data")))
    yield engine
    engine.close()


def _alone(engine, request: Request) -> bytes:
    return result_of(engine.submit(request)).audio


def test_base_and_two_adapters_batch_together_each_as_alone(lora_engine, adapters):
    one, two = adapters
    requests = [
        Request(model_version=MODEL, prompt="piano", duration=2, seed=7),
        Request(model_version=MODEL, prompt="piano", duration=2, seed=7, weights=str(one)),
        Request(model_version=MODEL, prompt="piano", duration=2, seed=7, weights=str(two)),
        Request(model_version=MODEL, prompt="drums", duration=1, seed=8, weights=str(one)),
    ]
    alone = [_alone(lora_engine, r) for r in requests]
    assert len({alone[0], alone[1], alone[2]}) == 3  # each adapter changes the audio (else nothing is proven)

    leader = Follower(lora_engine, requests[0])
    assert leader.progressing.wait(60)
    followers = [Follower(lora_engine, r) for r in requests[1:]]
    outcomes = [leader.outcome(), *(f.outcome() for f in followers)]
    assert max(leader.batch_sizes()) >= 3  # they did decode together
    assert [o.result.audio for o in outcomes] == alone


def test_audiocrafts_loop_applies_an_adapter_to_its_request_only(settings, adapters, tmp_path):
    engine = load_engine(settings.with_(decoder="reference", warmup="none", data_dir=tmp_path))
    try:
        base = Request(model_version=MODEL, prompt="piano", duration=1, seed=3)
        before = _alone(engine, base)
        tuned_audio = _alone(engine, Request(**{**base.as_dict(), "weights": str(adapters[0])}))
        assert tuned_audio != before
        assert _alone(engine, base) == before  # the adapter left the model as it was
    finally:
        engine.close()


def test_a_full_fine_tune_is_a_model_of_its_own(lora_engine, settings, tmp_path):
    full = write_full_tune(settings, MODEL, tmp_path)
    base = Request(model_version=MODEL, prompt="piano", duration=1, seed=4)
    assert _alone(lora_engine, Request(**{**base.as_dict(), "weights": str(full)})) != _alone(lora_engine, base)
    resident = lora_engine.health()["devices"][0]["resident_models"]
    assert MODEL in resident and any(key.startswith(f"{MODEL}@") for key in resident)


def test_bad_weights_fail_with_a_message(lora_engine, adapters, tmp_path):
    not_a_tar = tmp_path / "notes.txt"
    not_a_tar.write_text("hello")
    cases = [
        (str(tmp_path / "missing.tar"), "`missing.tar` does not exist"),
        (str(not_a_tar), "`notes.txt` is not a tar"),
        (str(adapters[0]), "fine-tune of `large`; they cannot decode `stereo-large`"),
    ]
    for weights, message in cases:
        model = "stereo-large" if weights == str(adapters[0]) else MODEL
        events = list(lora_engine.submit(Request(model_version=model, prompt="x", duration=1, weights=weights)))
        assert isinstance(events[-1], Failed) and events[-1].kind == "user", events[-1]
        assert message in events[-1].message
        assert str(tmp_path) not in events[-1].message  # this server's paths are its own business


def test_a_fine_tune_that_finds_no_adapter_slot_waits_for_one(settings, adapters, tmp_path):
    """With one adapter slot, a second fine-tune waits for the first's request to end (it is not failed), then
    takes the slot; /health-check lists what each tier holds."""
    from musicgen_local.engine.api import Done

    one, two = adapters
    engine = load_engine(settings.with_(warmup="none", max_loras=1, data_dir=tmp_path))
    try:
        runs = [
            engine.submit(Request(model_version=MODEL, prompt="piano", duration=2, seed=s, weights=str(w)))
            for s, w in ((1, one), (2, two))
        ]
        assert [type(list(run)[-1]) for run in runs] == [Done, Done]
        health = engine.health()
    finally:
        engine.close()
    assert len(health["devices"][0]["adapters"][MODEL]) == 1  # the one slot, now holding the second
    assert len(health["host_adapters"]) == 2


def test_a_deployment_keeps_its_adapter_in_a_slot_the_other_fine_tunes_do_not_take(settings, adapters, tmp_path):
    """Two adapter slots and a LoRA deployment kept warm: its adapter is in a slot before any request, two other
    fine-tunes take turns in the other slot instead of replacing it, and a second deployment that would take the
    last slot is refused naming the setting. Let go, it is replaced like any other."""
    from musicgen_local.engine.api import Done
    from musicgen_local.errors import UserError

    one, two = adapters
    three = _random_lora(load_model(settings, MODEL, "cpu").lm, tmp_path / "three.tar", 3)
    engine = load_engine(settings.with_(warmup="none", max_loras=2, data_dir=tmp_path / "data"))

    def predict(weights: Path, tune: str) -> None:
        request = Request(model_version=MODEL, prompt="piano", duration=1, seed=1, weights=str(weights), tune=tune)
        assert isinstance(list(engine.submit(request))[-1], Done)

    def device() -> dict:
        return engine.health()["devices"][0]

    try:
        note = engine.keep("alice/prod", MODEL, str(one), "cpu", "alice/tuned:v1").result(120)
        assert "with its adapter alice/tuned:v1 in one of the model's adapter slots" in note
        assert device()["pinned_adapters"] == {"alice/prod": "alice/tuned:v1"}
        assert device()["adapters"] == {MODEL: ["alice/tuned:v1"]}  # before any request
        predict(two, "bob/tuned:v1")
        predict(three, "carol/tuned:v1")
        assert device()["adapters"] == {MODEL: ["carol/tuned:v1", "alice/tuned:v1"]}
        with pytest.raises(UserError, match="one slot always stays free for other fine-tunes"):
            engine.keep("bob/prod", MODEL, str(two), "cpu", "bob/tuned:v1").result(120)
        assert device()["pinned_adapters"] == {"alice/prod": "alice/tuned:v1"}
        predict(one, "alice/tuned:v1")

        engine.let_go("alice/prod")
        deadline = time.monotonic() + 60
        while device()["pinned_adapters"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert device()["pinned_adapters"] == {}
        predict(two, "bob/tuned:v1")
        predict(three, "carol/tuned:v1")
        assert device()["adapters"] == {MODEL: ["carol/tuned:v1", "bob/tuned:v1"]}
    finally:
        engine.close()
