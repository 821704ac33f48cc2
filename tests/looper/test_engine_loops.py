"""Loops through the engine, on the tiny weights: the model really generates every variation (as one batch), and the
test seam (`LocalEngine(loop_audio=...)`) then hands the pipeline a click track in place of what the tiny random
model made (noise, with no beat to lock to)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from musicgen_local.engine.api import Done, Failed, Log, LoopRequest, Started
from musicgen_local.engine.local import LocalEngine
from musicgen_local.looper.plan import plan_loop
from musicgen_local.looper.stretch import available
from musicgen_local.testing import loop_signals as signals

pytestmark = [pytest.mark.skipif(not available(), reason="rubberband-cli is not installed (make install)")]


def _clicks_at(bpm: float):
    def audio_of(seed: int, generated: np.ndarray) -> np.ndarray:
        assert generated.shape[0] == 1 and generated.shape[1] > 32000  # what the model made: mono, seconds long
        return signals.click_track(bpm=bpm, seconds=generated.shape[1] / 32000).audio

    return audio_of


@pytest.fixture(scope="module")
def looper_engine(settings, tmp_path_factory):
    engine = LocalEngine(
        settings.with_(warmup="none", data_dir=tmp_path_factory.mktemp("loops")), loop_audio=_clicks_at(117.0)
    )
    yield engine
    engine.close()


@pytest.mark.slow
def test_four_variations_decode_as_one_batch_and_are_loops_of_the_exact_length(looper_engine):
    events = list(looper_engine.submit(LoopRequest("a drum loop", bpm=117, variations=4, max_duration=9, seed=5)))
    done = events[-1]
    assert isinstance(done, Done), done
    assert sum(isinstance(e, Started) for e in events) == 1
    lines = [e.line for e in events if isinstance(e, Log)]
    assert "Decoding in a batch of 4 requests" in lines  # the four generations shared the model's batch
    expected = plan_loop(117, 9, 32000).samples  # 4 bars of 4 beats at 117 bpm: round(16 * 60 / 117 * 32000)
    assert expected == round(16 * 60 / 117 * 32000)
    assert sorted(done.result.outputs) == ["variation_01", "variation_02", "variation_03", "variation_04"]
    for data in done.result.outputs.values():
        loop, rate = soundfile.read(io.BytesIO(data), dtype="float32")
        assert rate == 32000 and loop.shape == (expected,)


@pytest.mark.slow
def test_a_tempo_30_bpm_off_rerolls_then_fails_saying_what_was_tried(settings, tmp_path):
    engine = LocalEngine(settings.with_(warmup="none", data_dir=tmp_path), loop_audio=_clicks_at(147.0))
    try:
        events = list(engine.submit(LoopRequest("a drum loop", bpm=117, variations=1, max_duration=9, seed=5)))
    finally:
        engine.close()
    failed = events[-1]
    assert isinstance(failed, Failed) and failed.kind == "user"
    assert failed.message.startswith("Failed to generate a loop in the requested 117 bpm")
    assert failed.message.count("seed ") == 4 and "147" in failed.message  # every try, with what it measured
    assert sum("re-rolling with seed" in e.line for e in events if isinstance(e, Log)) == 3
