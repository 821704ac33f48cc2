"""Where in a generation the loop is cut, how fast it really is, and how it maps onto the exact grid.

The loop runs from a downbeat to the beat `plan.beats` beats later, the earliest such span that
leaves room after it for the overhang the seam folds in. Its measured tempo is `plan.beats` beats
over that span (octave errors already folded by `beats.at_octave`). The stretch maps the span onto
exactly `plan.samples` samples, pinning every downbeat inside it to its place on the requested grid,
and carries a beat of context on either side so that Rubber Band's edges fall outside the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from .beats import Beats
from .plan import BEATS_PER_BAR, FOLD_BEATS, TEMPO_TOLERANCE, LoopPlan

CONTEXT_BEATS = 1.0  # kept before and after the loop and its overhang for the stretch
MIN_AFTER_FOLD_BEATS = 0.25  # the least context past the overhang a generation must still hold


@dataclass(frozen=True)
class Cut:
    start: int  # source sample of the loop's first downbeat
    end: int  # source sample of the beat right after the loop (the next loop's first)
    downbeats: tuple[int, ...]  # source samples of the downbeats from start to end inclusive
    bpm: float  # the generation's tempo over the loop

    def off_by(self, plan: LoopPlan) -> float:
        """Relative tempo error against the request (0.05: 5 % fast or slow)."""
        return abs(self.bpm / plan.bpm - 1.0)

    def in_tempo(self, plan: LoopPlan) -> bool:
        return self.off_by(plan) <= TEMPO_TOLERANCE


@dataclass(frozen=True)
class StretchJob:
    first: int  # source sample where the stretched context starts
    last: int  # source sample where it ends (exclusive)
    keys: tuple[tuple[int, int], ...]  # (sample in context, sample in output) pinned by the stretch
    out_len: int
    loop_start: int  # output sample where the loop begins


def find_cut(beats: Beats, plan: LoopPlan, n_samples: int) -> Cut | str:
    """The loop's span in a generation of `n_samples`, or why there is none (a reason for a re-roll)."""
    sr = plan.sample_rate
    if len(beats) < plan.beats + 1:
        return f"found {len(beats)} beats, the loop needs {plan.beats + 1}"
    for first in beats.downbeats():
        last = first + plan.beats
        if last >= len(beats):
            break
        start, end = round(beats.times[first] * sr), round(beats.times[last] * sr)
        beat = (end - start) / plan.beats
        if end + (FOLD_BEATS + MIN_AFTER_FOLD_BEATS) * beat > n_samples:
            break
        marks = range(first, last + 1, BEATS_PER_BAR) if plan.beats >= BEATS_PER_BAR else (first, last)
        downbeats = tuple(round(beats.times[i] * sr) for i in marks)
        return Cut(start, end, downbeats, plan.beats * 60.0 * sr / (end - start))
    return "no downbeat leaves room for a whole loop and its overhang"


def stretch_job(cut: Cut, plan: LoopPlan, n_samples: int) -> StretchJob:
    """The stretch that puts `cut` on the requested grid: the loop exactly `plan.samples` long, each
    downbeat at a whole number of the requested beats from its start."""
    beat_in = (cut.end - cut.start) / plan.beats
    ratio = plan.samples / (cut.end - cut.start)
    first = max(0, round(cut.start - CONTEXT_BEATS * beat_in))
    last = min(n_samples, round(cut.end + (FOLD_BEATS + CONTEXT_BEATS) * beat_in))
    loop_start = round((cut.start - first) * ratio)
    keys = []
    for source in cut.downbeats:
        beats_in = (source - cut.start) / beat_in
        keys.append((source - first, loop_start + round(round(beats_in) * plan.beat_samples)))
    keys[-1] = (cut.end - first, loop_start + plan.samples)  # the end lands exactly one loop later
    out_len = keys[-1][1] + round((last - cut.end) * ratio)
    return StretchJob(first, last, tuple(keys), out_len, loop_start)
