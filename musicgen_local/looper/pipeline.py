"""The looper's pipeline: generated audio in, finished loop files (or a re-roll request) out.

The engine drives a `LoopSession`:

    session = LoopSession(prompt, bpm, max_duration, variations, seed, output_format, say=log)
    rows = session.rows                      # Row(variation, attempt, seed) for each generation to run
    while rows:                              # generate session.prompt for session.generate_seconds,
        audio = generate(rows)               #   one row per Row, each with its own seed, as one batch
        outcome = session.take(rows, audio)  # -> Reroll(rows) or Finished(files); raises LoopFailed
        rows = outcome.rows if isinstance(outcome, Reroll) else ()

(`run(session, generate)` is that loop.) Every variation is cut, stretched and folded on its own; a
variation whose tempo is off (octave errors folded) or that has no steady beat is generated again
with another seed, at most `MAX_ATTEMPTS` times in all, and the re-rolls of one round run as one
batch. Re-roll policy: a variation still off after its last try is dropped and the others are
delivered (numbered variation_01 on, in order, the drop logged); only when no variation succeeds
does the run fail, with a message listing every seed tried and the tempo it measured.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from . import beats as B
from .cut import Cut, find_cut, stretch_job
from .plan import TEMPO_TOLERANCE, LoopPlan, plan_loop
from .prompt import bpm_text, with_tempo
from .schema import MAX_VARIATIONS, output_key
from .seam import fold
from .stretch import stretch

logger = logging.getLogger(__name__)
Say = Callable[[str], None]
MAX_ATTEMPTS = 4  # the first try and three re-rolls per variation
SEED_SPACE = 2**32


class LoopFailed(UserError):
    """No variation could be made at the requested tempo; the message says what was tried."""


@dataclass(frozen=True)
class Row:
    variation: int  # 0-based
    attempt: int  # 0: the first try
    seed: int


def row_seed(seed: int, variation: int, attempt: int) -> int:
    """Distinct for every (variation, attempt) of a request, and the same on every run with that seed."""
    return (seed + variation + MAX_VARIATIONS * attempt) % SEED_SPACE


@dataclass(frozen=True)
class Reroll:
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class Finished:
    files: dict[str, bytes]  # output key ("variation_01" ...) -> the encoded file, in order
    extension: str  # "wav" or "mp3"
    plan: LoopPlan


@dataclass
class _Variation:
    tries: list[tuple[int, str]] = field(default_factory=list)  # (seed, what was measured)
    loop: np.ndarray | None = None  # [C, plan.samples] once made


class LoopSession:
    def __init__(
        self,
        prompt: str,
        bpm: float,
        max_duration: float,
        variations: int,
        seed: int,
        output_format: str = "wav",
        say: Say = logger.info,
        sample_rate: int = 32000,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self.plan = plan_loop(bpm, max_duration, sample_rate)
        self.tempo_prompt = with_tempo(prompt, bpm)
        self.output_format = output_format
        self.seed = seed
        self.max_attempts = max_attempts
        self._say = say
        self._variations = [_Variation() for _ in range(variations)]
        self.rows: tuple[Row, ...] = tuple(Row(v, 0, row_seed(seed, v, 0)) for v in range(variations))
        note = self.tempo_prompt.note(bpm)
        if note:
            say(note)
        say(f"Loop: {self.plan.describe()}; generating {self.generate_seconds:g} s per variation")

    @property
    def prompt(self) -> str:
        """What the model is conditioned on (the user's prompt with the tempo reconciled)."""
        return self.tempo_prompt.text

    @property
    def generate_seconds(self) -> float:
        return self.plan.generate_seconds

    def take(self, rows: Sequence[Row], audio: Sequence[np.ndarray]) -> Reroll | Finished:
        """Cut loops from the generations of `rows` (`audio[i]`: [T] or [C, T] at the plan's sample rate,
        numpy or torch). Returns the re-rolls still to run, or the finished files."""
        if len(rows) != len(audio):
            raise ValueError(f"{len(rows)} rows but {len(audio)} generations")
        again = []
        # Each variation's beat tracking, stretch (a Rubber Band process) and fold are independent: side by side.
        with ThreadPoolExecutor(max(1, min(len(rows), os.cpu_count() or 1))) as pool:
            made = list(pool.map(lambda pair: self._make(pair[0], _numpy(pair[1])), zip(rows, audio, strict=True)))
        for row, (loop, found) in zip(rows, made, strict=True):
            state = self._variations[row.variation]
            state.tries.append((row.seed, found))
            if loop is not None:
                state.loop = loop
            elif row.attempt + 1 < self.max_attempts:
                again.append(Row(row.variation, row.attempt + 1, row_seed(self.seed, row.variation, row.attempt + 1)))
                self._say(f"Variation {row.variation + 1}: re-rolling with seed {again[-1].seed}")
            else:
                self._say(f"Variation {row.variation + 1}: dropped after {len(state.tries)} tries")
        self.rows = tuple(again)
        return Reroll(self.rows) if again else self._finish()

    def _make(self, row: Row, audio: np.ndarray) -> tuple[np.ndarray | None, str]:
        """The finished loop [C, N] and what was measured, or None and why it failed."""
        plan, label = self.plan, f"Variation {row.variation + 1} (seed {row.seed})"
        self._say(f"{label}: tracking beats")
        found = B.at_octave(B.track(audio, plan.sample_rate, plan.bpm), plan.bpm)
        if len(found) < 2:
            self._say(f"{label}: no steady beat")
            return None, "no steady beat"
        if abs(found.bpm / plan.bpm - 1) > TEMPO_TOLERANCE:  # before the cut: a slow take may not fit the loop
            self._say(f"{label}: measured {found.bpm:.1f} bpm, {_off(found.bpm, plan)} {bpm_text(plan.bpm)} bpm")
            return None, f"{found.bpm:.1f} bpm"
        cut = find_cut(found, plan, audio.shape[-1])
        if isinstance(cut, str):
            self._say(f"{label}: measured {found.bpm:.1f} bpm, but {cut}")
            return None, f"{found.bpm:.1f} bpm, {cut}"
        if not cut.in_tempo(plan):
            self._say(f"{label}: {cut.bpm:.1f} bpm over the loop, {_off(cut.bpm, plan)} {bpm_text(plan.bpm)} bpm")
            return None, f"{cut.bpm:.1f} bpm"
        self._say(f"{label}: measured {cut.bpm:.1f} bpm; stretching to {bpm_text(plan.bpm)} bpm and folding the seam")
        return self._loop(audio, cut), f"{cut.bpm:.1f} bpm"

    def _loop(self, audio: np.ndarray, cut: Cut) -> np.ndarray:
        plan = self.plan
        job = stretch_job(cut, plan, audio.shape[-1])
        stretched = stretch(audio[..., job.first : job.last], plan.sample_rate, job.keys, job.out_len)
        loop_end = job.loop_start + plan.samples
        loop = fold(stretched[..., job.loop_start : loop_end], stretched[..., loop_end : loop_end + plan.fold_samples])
        return loop if loop.ndim == 2 else loop[None]

    def _finish(self) -> Finished:
        made = [v.loop for v in self._variations if v.loop is not None]
        if not made:
            raise LoopFailed(self._failure())
        self._say(f"Encoding {len(made)} loop(s) as {self.output_format}")
        files = {output_key(i): encode(loop, self.plan.sample_rate, self.output_format) for i, loop in enumerate(made)}
        return Finished(files, self.output_format, self.plan)

    def _failure(self) -> str:
        tried = "; ".join(
            f"variation {i + 1}: " + ", ".join(f"seed {seed} ({what})" for seed, what in v.tries)
            for i, v in enumerate(self._variations)
        )
        return (
            f"Failed to generate a loop in the requested {bpm_text(self.plan.bpm)} bpm (a generation is used when "
            f"its tempo is within {TEMPO_TOLERANCE:.1%} of it, octave errors allowed). Tried {tried}. The prompt "
            f"sent was {self.prompt!r}; if the music it describes has another tempo, ask for a bpm near the tempos "
            "measured, or describe the music differently."
        )


def _off(found: float, plan: LoopPlan) -> str:
    return f"{abs(found / plan.bpm - 1):.0%} {'faster than' if found > plan.bpm else 'slower than'}"


def encode(loop: np.ndarray, sr: int, output_format: str) -> bytes:
    """Peak-normalise (to -1 dBFS) and encode one loop [C, N]. One gain over the whole loop, so the seam
    stays as it was. Not meta/musicgen's default loudness normalisation: -14 LUFS clips percussive loops
    (0.3 % of the drum loop's samples, 0.6 % of the click track's), and the original looper peak-normalised."""
    import torch

    from ..audio import encode as encode_audio

    return encode_audio(torch.from_numpy(np.ascontiguousarray(loop)), sr, output_format, "peak")


def _numpy(audio) -> np.ndarray:
    if hasattr(audio, "detach"):
        audio = audio.detach().float().cpu().numpy()
    audio = np.asarray(audio, dtype=np.float32)
    return audio[0] if audio.ndim == 2 and audio.shape[0] == 1 else audio


def run(session: LoopSession, generate: Callable[[Sequence[Row]], Sequence[np.ndarray]]) -> Finished:
    """Drive `session` to the end: `generate(rows)` returns one generation of `session.prompt`, lasting
    `session.generate_seconds`, per row, each drawn from that row's seed."""
    rows = session.rows
    while True:
        outcome = session.take(rows, generate(rows))
        if isinstance(outcome, Finished):
            return outcome
        rows = outcome.rows
