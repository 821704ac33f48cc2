"""How long a loop is, and how much audio the engine must generate to cut it.

The exact-length rule: a loop is `beats` beats long, `beats` a power of two (1, 2, 4, 8, ...: whole
power-of-two bars of 4 beats from 4 beats on), the largest that fits in `max_duration` at the requested
tempo, and its file holds exactly `round(beats x 60 / bpm x sample_rate)` samples, so a DAW at that
tempo tiles it on the grid (the rounding is below half a sample, 16 us at 32 kHz).

A bar is 4 beats. The original lets its tracker call 2, 3 or 4 beats a bar; we fix 4 because a
power of two of 4-beat bars is a power of two of beats, which sits on the grid of any DAW project
whatever its meter, MusicGen's output is overwhelmingly in 4/4, and a prompt's ", 140 bpm" says
nothing of meter (a 3-beat bar would make 3-, 6- or 12-beat loops that drift against a 4/4 grid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BEATS_PER_BAR = 4
# A generation is accepted when its tempo (octave errors folded) is within 7.5 % of the requested one:
# about the original's +-10 BPM at its default 140, but relative, because what it bounds is the
# stretch ratio Rubber Band must apply (+-10 BPM is 25 % at 40 BPM and 3 % at 300).
TEMPO_TOLERANCE = 0.075
LEAD_IN_BEATS = BEATS_PER_BAR  # a whole bar before the loop always holds a downbeat to start on
FOLD_BEATS = 1  # the overhang folded over the loop's start
TAIL_BEATS = FOLD_BEATS + 1  # the overhang, and one beat more so the tracker sees the loop's last beat in context


@dataclass(frozen=True)
class LoopPlan:
    bpm: float
    beats: int  # the loop's length in beats, a power of two
    sample_rate: int = 32000

    @property
    def bars(self) -> float:
        return self.beats / BEATS_PER_BAR

    @property
    def beat_samples(self) -> float:
        return 60.0 * self.sample_rate / self.bpm

    @property
    def samples(self) -> int:
        """The exact length of every loop file of this request."""
        return round(self.beats * self.beat_samples)

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate

    @property
    def fold_samples(self) -> int:
        return round(FOLD_BEATS * self.beat_samples)

    @property
    def generate_seconds(self) -> float:
        """Audio the engine generates per variation: a bar of lead-in, the loop and its tail, at the slowest
        tempo the tolerance accepts (a slower generation spans more seconds for the same beats)."""
        beats = LEAD_IN_BEATS + self.beats + TAIL_BEATS
        return math.ceil(beats * 60.0 / self.bpm * (1 + TEMPO_TOLERANCE) * 100) / 100

    def describe(self) -> str:
        length = f"{self.bars:g} bar{'s' if self.bars != 1 else ''}" if self.beats >= BEATS_PER_BAR else ""
        length = length or f"{self.beats} beat{'s' if self.beats != 1 else ''}"
        return f"{length} at {self.bpm:g} bpm = {self.samples} samples ({self.seconds:.3f} s)"


def plan_loop(bpm: float, max_duration: float, sample_rate: int = 32000) -> LoopPlan:
    """The longest power-of-two-beats loop that fits in `max_duration` seconds at `bpm`."""
    fits = max_duration * bpm / 60.0  # beats that fit (at least 1.33 within the schema's bounds)
    if fits < 1:
        raise ValueError(f"not even one beat at {bpm} bpm fits in {max_duration} s")
    beats = 2 ** math.floor(math.log2(fits) + 1e-9)
    return LoopPlan(bpm, beats, sample_rate)
