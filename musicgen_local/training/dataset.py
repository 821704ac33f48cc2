"""A training's dataset: what the user sent, cut into pieces with descriptions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Piece:
    wav: Path  # a wav at 32 kHz with the model's channels, at most 30 s
    description: str
