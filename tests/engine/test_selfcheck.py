"""The fast decoder's self-check: it passes on every tiny model in float32, and in bfloat16 and float16 (the
CUDA dtypes, run here on CPU) within the tolerance it states; a fast step broken on purpose fails it, and
the engine then serves that model with audiocraft's own loop, giving audiocraft's audio, while health
says why."""

from __future__ import annotations

import logging

import pytest
import torch

from musicgen_local.engine import Request, load_engine, result_of, selfcheck
from musicgen_local.engine.fast import SlotBatch
from musicgen_local.engine.fast.model import StaticLM
from musicgen_local.engine.models import load_model


@pytest.fixture(scope="module")
def models(settings):
    return {v: load_model(settings, v, "cpu") for v in ("large", "stereo-large", "stereo-melody-large")}


def check(model, dtype=torch.float32, products="torch"):
    prefix = 300 if "melody" in model.name else 0
    with torch.inference_mode():
        return selfcheck.compare(model, SlotBatch(model.lm.to(dtype), 2, 1500, prefix, "eager", products))


@pytest.mark.parametrize("model_version", ["large", "stereo-large", "stereo-melody-large"])
@pytest.mark.parametrize("products", ["rows", "torch"])
def test_the_fast_decoder_passes_in_float32(models, model_version, products):
    verdict = check(models[model_version], products=products)
    assert verdict.ok, verdict.summary
    assert verdict.agreement == 1.0 and verdict.max_margin == 0.0
    assert verdict.reference_margin is None  # within rounding: audiocraft's loop was not asked


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("model_version", ["large", "stereo-large"])
def test_the_fast_decoder_agrees_with_audiocraft_in_half_precision(models, model_version, dtype):
    model = models[model_version]
    try:
        verdict = check(model, dtype)
    finally:
        model.lm.to(torch.float32)
    assert verdict.ok, verdict.summary
    assert verdict.agreement >= selfcheck.MIN_AGREEMENT and verdict.max_margin <= verdict.tolerance
    assert verdict.tolerance < 0.1  # of the logits' std: the bound is tight enough to mean something


def test_a_broken_step_fails_the_check(models, monkeypatch):
    """Conditional and unconditional rows swapped (guidance turned around): a plausible bug, not noise."""
    original = StaticLM.step
    monkeypatch.setattr(StaticLM, "step", lambda self, *a, **k: original(self, *a, **k).flip(0))
    verdict = check(models["large"])
    assert not verdict.ok
    assert verdict.reference_margin == 0.0 and verdict.same_tokens < 0.5  # audiocraft's own loop, asked, is exact
    assert verdict.max_margin > 1000 * verdict.tolerance


def test_a_model_whose_fast_decoder_fails_is_served_by_audiocrafts_loop(settings, monkeypatch, caplog):
    request = Request(model_version="large", prompt="broken", duration=1, seed=5)
    reference = load_engine(settings.with_(decoder="reference", warmup="none"))
    try:
        expected = result_of(reference.submit(request)).audio
    finally:
        reference.close()

    original = StaticLM.step
    monkeypatch.setattr(StaticLM, "step", lambda self, *a, **k: original(self, *a, **k).flip(0))
    with caplog.at_level(logging.ERROR):
        engine = load_engine(settings.with_(warmup="large"))
        engine.wait_ready()
    try:
        status = engine.health()["devices"][0]["fast_decoder"]["large"]
        assert status.startswith("disabled (25 greedy steps in float32") and "tolerance" in status
        assert any("DISAGREES" in r.getMessage() for r in caplog.records)
        assert result_of(engine.submit(request)).audio == expected
    finally:
        engine.close()


def test_health_says_the_fast_decoder_passed_and_what_the_check_cost(settings):
    engine = load_engine(settings.with_(warmup="large"))
    engine.wait_ready()
    try:
        status = engine.health()["devices"][0]["fast_decoder"]["large"]
    finally:
        engine.close()
    assert status.startswith("enabled (25 greedy steps in float32: 100.0% of tokens are audiocraft's argmax")
    assert "checked in" in status
