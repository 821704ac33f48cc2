"""The tempo in the prompt.

The original appends ", {bpm} bpm" to whatever the prompt says, so "lofi beat at 90 BPM" asked at
120 becomes "lofi beat at 90 BPM, 120.0 bpm": the model hears two tempos, often follows the one in
the words, and the run fails its tempo check. Here a tempo the prompt already states is reconciled
in place: rewritten to the requested one where it stands ("at 90 BPM" -> "at 120 bpm"), or kept as
is when it already says the requested tempo; only a prompt that names no tempo gets ", 120 bpm"
appended. Ranges ("120-125 bpm") count as one stated tempo.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NUMBER = r"\d{2,3}(?:[.,]\d+)?"
_UNIT = r"(?:bpm|b\.p\.m\.?|beats?\s+(?:per|a)\s+minute)"
# "90 bpm", "90bpm", "90-95 BPM", "90 to 95 beats per minute"
_NUMBER_THEN_UNIT = rf"(?P<a>{_NUMBER})(?:\s*(?:-|–|to)\s*(?P<b>{_NUMBER}))?\s*-?\s*{_UNIT}"
# "bpm: 90", "BPM 90", "tempo 90", "tempo of 90", "tempo = 90", "♩=90"
_WORD_THEN_NUMBER = rf"(?:bpm|tempo|♩)\s*(?:[:=]|of|is|at)?\s*(?P<c>{_NUMBER})(?:\s*{_UNIT})?"
_TEMPO = re.compile(rf"\b{_NUMBER_THEN_UNIT}|(?<!\w){_WORD_THEN_NUMBER}\b", re.IGNORECASE)


@dataclass(frozen=True)
class TempoPrompt:
    text: str  # what the model is conditioned on
    stated: tuple[float, ...]  # tempos the user's prompt named (empty: none)
    changed: bool  # whether a stated tempo was rewritten

    def note(self, bpm: float) -> str | None:
        """A log line saying what was done to a tempo the prompt named, or None when it named none."""
        if not self.stated:
            return None
        named = ", ".join(f"{t:g}" for t in self.stated)
        if self.changed:
            return f"The prompt named {named} bpm; rewrote it to the requested {bpm_text(bpm)} bpm."
        return f"The prompt already names the requested {bpm_text(bpm)} bpm; left as is."


def bpm_text(bpm: float) -> str:
    """140 -> "140", 60.23 -> "60.23" (the original printed "140.0")."""
    return f"{round(bpm, 2):g}"


def _number(text: str) -> float:
    return float(text.replace(",", "."))


def with_tempo(prompt: str, bpm: float) -> TempoPrompt:
    """The prompt the model gets for a loop at `bpm`."""
    matches = list(_TEMPO.finditer(prompt))
    if not matches:
        body = prompt.strip().rstrip(",;. ")
        return TempoPrompt(f"{body}, {bpm_text(bpm)} bpm" if body else f"{bpm_text(bpm)} bpm", (), False)
    stated = tuple(_number(m.group(g)) for m in matches for g in ("a", "b", "c") if m.group(g))
    if all(abs(t - bpm) < 0.5 for t in stated):
        return TempoPrompt(prompt, stated, False)
    text = _TEMPO.sub(f"{bpm_text(bpm)} bpm", prompt)
    return TempoPrompt(text, stated, True)
