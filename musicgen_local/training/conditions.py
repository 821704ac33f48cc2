"""What a training conditions each piece on: its description (with T5's word dropout), a melody model's chroma
of the piece's own audio, and condition dropout; every random draw from the training's own `random.Random`.

audiocraft draws T5's word dropout (in training mode) and htdemucs' random shift (in the melody conditioner)
from Python's global generator; the trainer keeps the LM in evaluation mode, so that neither draws, and does
both here from its own generator: a training is reproducible and never touches the process' generators.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from ..stems import CONDITION, separate, stem_conditioner, stems_precomputed

SAMPLE_RATE = 32000


def word_dropout(conditioner) -> float:
    """The text conditioner's training-time word dropout (0 for conditioners without one)."""
    return float(getattr(conditioner, "word_dropout", 0.0) or 0.0)


def drop_words(text: str, p: float, rng: random.Random) -> str:
    """Each word kept with probability 1 - p (what audiocraft's T5 conditioner does in training mode)."""
    if p <= 0.0 or not text:
        return text
    return " ".join(word for word in text.split(" ") if rng.random() >= p)


class Conditioner:
    """Builds a micro-batch's conditions for `model` and turns them into the LM's condition tensors."""

    def __init__(self, model, device: torch.device) -> None:
        self.model, self.lm, self.device = model, model.lm, device
        self.melody = stem_conditioner(model) is not None
        conditioners = self.lm.condition_provider.conditioners  # an nn.ModuleDict (no .get)
        self.word_dropout = word_dropout(conditioners["description"]) if "description" in conditioners else 0.0
        self.stems: dict[int, torch.Tensor] = {}  # piece -> its melody stems [1, 1, T] (melody models)

    def separate(self, piece: int, wav: Path, seed: int) -> None:
        """A melody model's stems of one piece, separated once (not at every micro-batch), htdemucs' random shift
        drawn from a generator of the piece's own (so a resumed training separates it the same way)."""
        audio = read_wav(wav, self.device)[None]  # [1, C, T]
        with torch.no_grad():
            self.stems[piece] = separate(self.model, audio, random.Random(f"{seed}:{piece}"))

    def tensors(self, items: list[tuple[int, str, int, int]], rng: random.Random | None, cfg_p: float) -> dict:
        """`items`: (piece, description, start frame, frames) per row. `rng` None: as evaluated (no word nor
        condition dropout)."""
        from audiocraft.modules.conditioners import ConditioningAttributes, WavCondition, dropout_condition

        attributes = []
        hop = SAMPLE_RATE // int(self.model.frame_rate)
        for piece, description, start, frames in items:
            text = drop_words(description, self.word_dropout, rng) if rng is not None else description
            attr = ConditioningAttributes(text={"description": text or None})
            if self.melody:
                wav = self.stems[piece][..., start * hop : (start + frames) * hop]  # [1, 1, T]
                length = torch.tensor([wav.shape[-1]], device=self.device)
                attr.wav[CONDITION] = WavCondition(wav, length, [SAMPLE_RATE], [None], [0.0])
            if rng is not None and rng.random() < cfg_p:  # drop every condition of this piece
                for kind in ("text", "wav"):
                    for name in list(getattr(attr, kind)):
                        dropout_condition(attr, kind, name)
            attributes.append(attr)
        provider = self.lm.condition_provider
        with stems_precomputed(self.model):
            return provider(provider.tokenize(attributes))


def read_wav(path: Path, device: torch.device) -> torch.Tensor:
    import soundfile

    wav, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    if rate != SAMPLE_RATE:
        raise ValueError(f"{path} is at {rate} Hz, not {SAMPLE_RATE}")
    return torch.from_numpy(wav.T.copy()).to(device)  # [C, T]
