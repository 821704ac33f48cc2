"""Concurrent requests through the engine with the fast decoder: decoded together, yet each one's
audio is byte-for-byte what it gets alone (with audiocraft's own decoder, one request at a time)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from musicgen_local.engine import Hooks, Request, load_engine
from musicgen_local.errors import Cancelled
from tests.audio_helpers import write_tone

MODEL = "stereo-melody-large"


@pytest.fixture(scope="module")
def batching_engine(settings):
    engine = load_engine(settings.with_(decoder="fast", max_batch=8))
    engine.batching.scheduler.max_wait_s = 60  # a loaded CI machine must not split the batch under test
    return engine


def _arrive_together(engine, calls: list, keys: list[str]) -> list:
    """Start every call while the engine is busy (its lock held), as requests pile up on a server,
    and return their outcomes (a Result or the exception raised)."""

    def outcome(call):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - the test asserts on it
            return exc

    scheduler = engine.batching.scheduler
    with ThreadPoolExecutor(len(calls)) as pool:
        with engine._lock:
            futures = [pool.submit(outcome, call) for call in calls]
            deadline = time.monotonic() + 30
            while sum(scheduler.expected(k) for k in set(keys)) < len(calls):
                assert time.monotonic() < deadline, "requests never reached the engine"
                time.sleep(0.01)
        return [f.result() for f in futures]


def test_concurrent_requests_decode_in_one_batch_and_keep_their_solo_audio(batching_engine, engine, tmp_path):
    low, high = write_tone(tmp_path / "low.wav", 2.0, freq=220), write_tone(tmp_path / "high.wav", 3.0, freq=440)
    requests = [
        Request(model_version=MODEL, prompt="lofi hip hop", duration=2, seed=1),
        Request(model_version=MODEL, prompt="jazz", duration=1, seed=2, input_audio=str(low), top_k=50,
                temperature=0.8),
        Request(model_version=MODEL, prompt="rock", duration=3, seed=3, input_audio=str(high), continuation=True,
                continuation_end=1, top_p=0.9, classifier_free_guidance=5),
        Request(model_version=MODEL, prompt="ambient", duration=1, seed=4, multi_band_diffusion=True),
        Request(model_version="large", prompt="drums", duration=1, seed=5, output_format="mp3"),
    ]
    cancelled_request = Request(model_version=MODEL, prompt="noise", duration=2, seed=6)
    steps = []

    def cancel_after_ten() -> bool:
        return len(steps) >= 10

    cancelled_hooks = Hooks(on_progress=lambda done, total: steps.append(done), is_cancelled=cancel_after_ten)
    calls = [lambda r=r, i=i: batching_engine.generate(r, tmp_path / f"batched-{i}") for i, r in enumerate(requests)]
    calls.append(lambda: batching_engine.generate(cancelled_request, tmp_path / "cancelled", cancelled_hooks))
    sizes_before = len(batching_engine.batching.scheduler.batch_sizes)

    outcomes = _arrive_together(batching_engine, calls, [MODEL, "large"])

    assert isinstance(outcomes[-1], Cancelled) and 10 <= len(steps) < 2 * 50
    # five stereo-melody-large requests in one batch, the `large` one in its own
    assert sorted(batching_engine.batching.scheduler.batch_sizes[sizes_before:]) == [1, 5]
    for i, (request, batched) in enumerate(zip(requests, outcomes, strict=False)):
        alone = engine.generate(request, tmp_path / f"alone-{i}")  # the reference decoder, one at a time
        assert (batched.seed, batched.channels, batched.num_samples) == (request.seed, alone.channels,
                                                                        request.duration * 32000)
        assert batched.path.read_bytes() == alone.path.read_bytes(), request


def test_windowed_melody_request_batched_with_a_short_one_keeps_its_audio(batching_engine, engine, tmp_path):
    """Past 30 s: window 0 decodes in a batch with another request, window 1 alone; the melody is
    separated once and its later windows are conditioned under the engine lock."""
    melody = write_tone(tmp_path / "m.wav", 4.0, freq=220)
    long = Request(model_version=MODEL, prompt="jazz", duration=31, seed=7, input_audio=str(melody), top_k=50)
    short = Request(model_version=MODEL, prompt="lofi", duration=1, seed=8)
    calls = [lambda r=r: batching_engine.generate(r, tmp_path / f"batched-{r.seed}") for r in (long, short)]
    sizes_before = len(batching_engine.batching.scheduler.batch_sizes)

    outcomes = _arrive_together(batching_engine, calls, [MODEL])

    assert batching_engine.batching.scheduler.batch_sizes[sizes_before:] == [2, 1]
    for request, batched in zip((long, short), outcomes, strict=True):
        alone = engine.generate(request, tmp_path / f"alone-{request.seed}")
        assert batched.num_samples == request.duration * 32000
        assert batched.path.read_bytes() == alone.path.read_bytes()

