"""The looper's pipeline on music whose beat is known: exact length, tempo, downbeat, seam, re-rolls.

Tiny random weights make noise, not music, so these hand the pipeline synthetic audio in place of
generations (musicgen_local/testing/loop_signals.py): what the engine would pass, of the length the
pipeline asks for.
"""

import io

import numpy as np
import pytest
import soundfile

from musicgen_local.looper import quality
from musicgen_local.looper.pipeline import MAX_ATTEMPTS, Finished, LoopFailed, LoopSession, run
from musicgen_local.looper.stretch import available
from musicgen_local.testing import loop_signals as signals

# Beat tracking and Rubber Band on ~10 s signals: about a minute here in all (`make test-fast` leaves it out).
pytestmark = [
    pytest.mark.skipif(not available(), reason="rubberband-cli is not installed (make install)"),
    pytest.mark.slow,
]
SR = 32000
SEAM_LIMIT_DB = 3.0  # see test_seam_adds_no_click_over_the_loops_own_beats
# name: (signal maker, its tempo, requested bpm, max_duration): 4 bars each
CASES = {
    "click": (signals.click_track, 117.0, 117.0, 9),
    "drums": (signals.drum_loop, 124.0, 120.0, 8),
    "drift": (signals.drifting_tone, 96.0, 100.0, 10),
}


def make(name: str, output_format: str = "wav"):
    maker, tempo, bpm, max_duration = CASES[name]
    lines: list[str] = []
    session = LoopSession("a loop", bpm, max_duration, 1, 7, output_format, say=lines.append)
    audio = maker(bpm=tempo, seconds=session.generate_seconds).audio
    finished = run(session, lambda rows: [audio for _ in rows])
    loop, sr = soundfile.read(io.BytesIO(finished.files["variation_01"]), dtype="float32")
    assert sr == SR
    return loop, session, lines


@pytest.fixture(scope="module")
def loops():
    return {name: make(name) for name in CASES}


@pytest.mark.parametrize("name", list(CASES))
def test_length_is_exactly_whole_bars_at_the_requested_tempo(loops, name):
    loop, session, _ = loops[name]
    bpm = CASES[name][2]
    assert session.plan.beats == 16
    assert len(loop) == round(16 * 60 / bpm * SR)


def test_mp3_decodes_to_the_exact_length_too():
    loop, session, _ = make("click", "mp3")
    assert len(loop) == session.plan.samples


@pytest.mark.parametrize("name", list(CASES))
def test_beat_tracking_on_the_loop_finds_the_requested_tempo(loops, name):
    loop, session, lines = loops[name]
    bpm = CASES[name][2]
    assert abs(quality.tempo(loop, SR, bpm) - bpm) < 1.0
    assert any("measured" in line for line in lines)


def test_the_loop_starts_on_the_click_tracks_downbeat(loops):
    loop, session, _ = loops["click"]
    beat = session.plan.samples / session.plan.beats
    # The click nearest each beat position: the first within 10 ms of the start, every fourth the loud one.
    peaks = []
    for i in range(session.plan.beats):
        at = round(i * beat)
        window = np.abs(loop[max(0, at - 480) : at + 480])
        peaks.append((max(0, at - 480) + int(np.argmax(window)) - at, float(window.max())))
    assert 0 <= peaks[0][0] < 0.010 * SR
    loud = [height for _, height in peaks[0::4]]
    soft = [height for i, (_, height) in enumerate(peaks) if i % 4]
    assert min(loud) > 1.5 * max(soft)


@pytest.mark.parametrize("name", list(CASES))
def test_seam_adds_no_click_over_the_loops_own_beats(loops, name):
    """Threshold: 3 dB over the loudest other beat of the loop, i.e. the seam may not add as much
    unpredictable energy as one more copy of the loop's own loudest attack. A plain cut through the
    drifting tone scores 10-13 dB, the original's pipeline (3 ms blend, then the loop stretched on its
    own) 11 dB (next tests); ours scores at most 0.1 dB on these signals."""
    loop, session, _ = loops[name]
    marks = quality.interior_marks(len(loop), session.plan.beats)
    assert quality.seam_click_db(loop, marks) <= SEAM_LIMIT_DB


def _source_loop(signal, bars=4):
    start, end = (round(t * SR) for t in signal.downbeats[[0, bars]])
    interior = [round(t * SR) - start for t in signal.beats[1 : 4 * bars]]
    return start, end, interior


def test_the_seam_check_fails_on_a_plain_cut():
    drift = signals.drifting_tone()
    start, end, interior = _source_loop(drift)
    assert quality.seam_click_db(signals.original_loop(drift.audio, start, end, blend=0), interior) > SEAM_LIMIT_DB


def test_the_seam_check_fails_on_the_original_pipeline():
    """The original's 100-sample blend alone hides the cut in the downbeat's attack on these signals
    (0 dB), but it then stretches the loop by itself, and Rubber Band's edges meet at the seam."""
    drift = signals.drifting_tone()
    start, end, _ = _source_loop(drift)
    blended = signals.original_loop(drift.audio, start, end)
    stretched = signals.original_stretch(blended, 100.0 / drift.bpm)
    marks = quality.interior_marks(len(stretched), 16)
    assert quality.seam_click_db(stretched, marks) > SEAM_LIMIT_DB


def test_a_tempo_30_bpm_off_rerolls_then_fails_saying_what_was_tried():
    lines: list[str] = []
    session = LoopSession("a drum loop at 117 BPM", 147.0, 4, 1, 11, say=lines.append)
    assert session.prompt == "a drum loop at 147 bpm"
    audio = signals.click_track(seconds=session.generate_seconds).audio  # the model insists on 117
    seeds = []

    def generate(rows):
        seeds.extend(row.seed for row in rows)
        return [audio for _ in rows]

    with pytest.raises(LoopFailed) as failed:
        run(session, generate)
    assert len(seeds) == MAX_ATTEMPTS and len(set(seeds)) == MAX_ATTEMPTS
    message = str(failed.value)
    assert "147 bpm" in message
    for seed in seeds:
        assert f"seed {seed} (117.0 bpm)" in message
    assert sum("re-rolling" in line for line in lines) == MAX_ATTEMPTS - 1
    assert sum("117.0 bpm" in line for line in lines) == MAX_ATTEMPTS


def test_a_variation_that_never_comes_right_is_dropped_and_the_rest_delivered():
    lines: list[str] = []
    session = LoopSession("clicks", 117.0, 4, 2, 0, say=lines.append)
    good = signals.click_track(seconds=session.generate_seconds).audio
    bad = signals.click_track(bpm=90.0, seconds=session.generate_seconds).audio
    finished = run(session, lambda rows: [good if row.variation == 0 else bad for row in rows])
    assert isinstance(finished, Finished)
    assert list(finished.files) == ["variation_01"]
    assert any(f"dropped after {MAX_ATTEMPTS} tries" in line for line in lines)


def test_silence_has_no_beat_and_fails_with_a_message():
    session = LoopSession("nothing", 120.0, 2, 1, 0, say=lambda line: None, max_attempts=2)
    silence = np.zeros(round(session.generate_seconds * SR), np.float32)
    with pytest.raises(LoopFailed, match="no steady beat"):
        run(session, lambda rows: [silence for _ in rows])
