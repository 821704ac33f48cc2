"""Concurrent requests through the engine's public interface: decoded together on one device loop,
yet each one's file is byte-for-byte what it gets alone; with one slot the fast decoder gives
exactly audiocraft's own audio; several models at once take turns, none starves another."""

from __future__ import annotations

import threading

import pytest

from musicgen_local.engine import Request, load_engine, result_of
from musicgen_local.engine.api import Canceled, Done, Log, Progress, Started
from tests.audio_helpers import write_tone

MODEL = "stereo-melody-large"


@pytest.fixture(scope="module")
def reference_engine(settings):
    engine = load_engine(settings.with_(decoder="reference", warmup="none"))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def one_slot_engine(settings):
    """Two rows and MKL's products: the very operations of audiocraft's loop (the CPU rows kernel sums
    in another order, so its tokens may part from audiocraft's after a while; tests/engine/
    test_fast_decoder.py compares those at the token level)."""
    engine = load_engine(settings.with_(max_batch=1, cpu_products="torch", warmup="none"))
    yield engine
    engine.close()


class Follower:
    """Consumes one run on its own thread, as the server's dispatcher does; optionally cancels it.
    Followers sharing a `timeline` record every event there too, in the order they arrived."""

    def __init__(
        self, engine, request: Request, cancel_at: int | None = None, timeline: list | None = None, name: str = ""
    ) -> None:
        self.request, self.events, self.cancel_at = request, [], cancel_at
        self.timeline, self.name = timeline if timeline is not None else [], name
        self.progressing = threading.Event()
        self.run = engine.submit(request)
        self.thread = threading.Thread(target=self._follow)
        self.thread.start()

    def _follow(self) -> None:
        for event in self.run:
            self.events.append(event)
            self.timeline.append((self.name, event))
            if isinstance(event, Progress):
                self.progressing.set()
                if self.cancel_at is not None and event.done >= self.cancel_at:
                    self.run.cancel()

    def outcome(self):
        self.thread.join(timeout=300)
        return self.events[-1]

    def batch_sizes(self) -> list[int]:
        prefix = "Decoding in a batch of "
        return [
            int(e.line[len(prefix) :].split()[0])
            for e in self.events
            if isinstance(e, Log) and e.line.startswith(prefix)
        ]


@pytest.mark.slow
def test_requests_joining_a_running_batch_keep_their_solo_audio(engine, tmp_path):
    low, high = write_tone(tmp_path / "low.wav", 2.0, freq=220), write_tone(tmp_path / "high.wav", 3.0, freq=440)
    first = Request(model_version=MODEL, prompt="lofi hip hop", duration=6, seed=1)
    joining = [
        Request(
            model_version=MODEL, prompt="jazz", duration=1, seed=2, input_audio=str(low), top_k=50, temperature=0.8
        ),
        Request(
            model_version=MODEL,
            prompt="rock",
            duration=3,
            seed=3,
            input_audio=str(high),
            continuation=True,
            continuation_end=1,
            top_p=0.9,
            classifier_free_guidance=5,
        ),
        Request(model_version=MODEL, prompt="ambient", duration=1, seed=4, multi_band_diffusion=True),
        Request(model_version=MODEL, prompt="drums", duration=2, seed=5, output_format="mp3"),
    ]
    leader = Follower(engine, first)
    assert leader.progressing.wait(60)  # decoding: the others join its batch between two steps
    followers = [Follower(engine, r) for r in joining]
    canceled = Follower(engine, Request(model_version=MODEL, prompt="noise", duration=4, seed=6), cancel_at=10)

    assert isinstance(canceled.outcome(), Canceled)
    assert max(e.done for e in canceled.events if isinstance(e, Progress)) < 4 * 50
    for follower in [leader, *followers]:
        done = follower.outcome()
        assert isinstance(done, Done), done
        assert max(follower.batch_sizes(), default=1) >= 2, follower.request  # the logs say it was batched
        alone = result_of(engine.submit(follower.request))  # the same request again, on its own
        assert (done.result.seed, done.result.channels, done.result.num_samples) == (
            follower.request.seed,
            alone.channels,
            alone.num_samples,
        )
        assert done.result.audio == alone.audio, follower.request


@pytest.mark.slow
def test_windowed_melody_request_batched_with_a_short_one_keeps_its_audio(engine, tmp_path):
    """Past 30 s: the melody is separated once; window 0 decodes next to another request."""
    melody = write_tone(tmp_path / "m.wav", 4.0, freq=220)
    long = Follower(
        engine, Request(model_version=MODEL, prompt="jazz", duration=31, seed=7, input_audio=str(melody), top_k=50)
    )
    assert long.progressing.wait(60)
    short = Follower(engine, Request(model_version=MODEL, prompt="lofi", duration=1, seed=8))
    for follower in (long, short):
        done = follower.outcome()
        assert isinstance(done, Done) and max(follower.batch_sizes()) == 2
        assert done.result.num_samples == follower.request.duration * 32000
        assert done.result.audio == result_of(engine.submit(follower.request)).audio


@pytest.mark.parametrize("model_version", ["stereo-melody-large", "stereo-large", "melody-large", "large"])
@pytest.mark.slow
def test_with_one_slot_the_fast_decoder_gives_audiocrafts_own_audio(
    one_slot_engine, reference_engine, tmp_path, model_version
):
    """Text, melody or continuation, sampling parameters, MBD: the same seed, the same bytes."""
    tone = write_tone(tmp_path / "tone.wav", 3.0, freq=330)
    melody = {"input_audio": str(tone)} if "melody" in model_version else {}
    requests = [
        Request(model_version=model_version, prompt="lofi", duration=2, seed=11, **melody),
        Request(
            model_version=model_version,
            prompt="rock",
            duration=3,
            seed=12,
            input_audio=str(tone),
            continuation=True,
            continuation_end=1,
            top_p=0.9,
            classifier_free_guidance=5,
        ),
        Request(
            model_version=model_version,
            prompt="jazz",
            duration=1,
            seed=13,
            top_k=0,
            temperature=1.3,
            multi_band_diffusion=True,
            output_format="mp3",
        ),
    ]
    for request in requests:
        assert result_of(one_slot_engine.submit(request)).audio == result_of(reference_engine.submit(request)).audio


def test_two_models_take_turns_on_one_device(engine):
    """Two long requests for different models at once: when the first ends, the other is far along
    (one step of each model per turn of the loop), not still waiting for its turn."""
    timeline: list = []
    followers = [
        Follower(engine, Request(model_version=v, prompt=v, duration=8, seed=1), timeline=timeline, name=v)
        for v in ("large", "stereo-large")
    ]
    for follower in followers:
        assert isinstance(follower.outcome(), Done)
    first_done = next(i for i, (_, e) in enumerate(timeline) if isinstance(e, Done))
    other = next(f.name for f in followers if f.name != timeline[first_done][0])
    progress = [e for name, e in timeline[:first_done] if name == other and isinstance(e, Progress)]
    assert progress and progress[-1].done / progress[-1].total > 0.5


def test_a_full_batch_of_one_model_does_not_hold_up_another_model(settings):
    engine = load_engine(settings.with_(max_batch=1, warmup="none"))
    try:
        timeline: list = []
        long = Follower(
            engine, Request(model_version="large", prompt="a", duration=10, seed=1), timeline=timeline, name="long"
        )
        assert long.progressing.wait(60)
        queued = Follower(
            engine, Request(model_version="large", prompt="b", duration=1, seed=2), timeline=timeline, name="queued"
        )
        other = Follower(
            engine,
            Request(model_version="stereo-large", prompt="c", duration=1, seed=3),
            timeline=timeline,
            name="other",
        )
        for follower in (long, queued, other):
            assert isinstance(follower.outcome(), Done)

        def at(name: str, kind) -> int:
            return next(
                i
                for i, (n, e) in enumerate(timeline)
                if n == name and isinstance(e, kind) and (kind is not Progress or e.done == e.total)
            )

        # `large` has one slot: the queued request starts once the long one has decoded its last step;
        # the other model waited for neither
        assert at("other", Done) < at("long", Progress) < at("queued", Started)
    finally:
        engine.close()
