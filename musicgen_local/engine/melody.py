"""Melody conditioning with one stem separation per request, however many 30 s windows it spans.

audiocraft's `ChromaStemConditioner` turns a melody into a condition in two stages: htdemucs keeps
the vocals + other stems (`_get_stemmed_wav`), then a chroma is computed from them
(`_extract_chroma`). Past 30 s, `MusicGen._generate_tokens` tiles the *raw* melody for each window
and the conditioner separates it all over again, once per window (and htdemucs costs far more
than the chroma). Here the whole melody is separated once; each window tiles the *separated*
signal exactly as audiocraft tiles the raw one, and while those windows decode the conditioner is
told its input is already separated, so it only computes the chroma.

For one window (<= 30 s) nothing changes: audiocraft's own path separates once anyway.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

CONDITION = "self_wav"  # the attribute audiocraft's melody models condition on


def stem_conditioner(model) -> Any | None:
    """The melody model's ChromaStemConditioner, or None for models without melody conditioning."""
    conditioners = model.lm.condition_provider.conditioners  # an nn.ModuleDict
    return conditioners[CONDITION] if CONDITION in conditioners else None  # noqa: SIM401 (no .get)


def separate(model, wav: torch.Tensor) -> torch.Tensor:
    """wav [1, C, T] at the model's rate -> the melody stems (vocals + other), [1, 1, T] at the
    conditioner's rate: what the conditioner computes before its chroma, on the same input it would
    get (ConditioningProvider averages the channels to mono before the conditioner sees them)."""
    conditioner = stem_conditioner(model)
    mono = wav.mean(dim=1, keepdim=True)  # [1, 1, T]
    return conditioner._get_stemmed_wav(mono.to(conditioner.device), model.sample_rate)  # [1, 1, T]


@dataclass
class SeparatedMelody:
    """A melody reference whose stems are separated on first use, then reused for every window.

    Implements the engine's `Melody` protocol (`condition_for_window`), plus `decoding`, the
    context the LM must decode a window in once its condition came from here.
    """

    wav: torch.Tensor  # [1, C, T] at the model's sample rate, the model's channel count
    stems: torch.Tensor | None = None  # [1, 1, T], filled on first use
    separations: int = 0  # htdemucs runs for this request (tests assert it stays at 1)
    windowed: bool = field(default=False)

    def stems_for(self, model) -> torch.Tensor:
        if self.stems is None:
            self.stems = separate(model, self.wav)
            self.separations += 1
        return self.stems

    def condition_for_window(self, model, time_offset_s: float):
        """The separated melody tiled over the window starting at time_offset_s, as audiocraft tiles
        the raw one: samples [offset, offset + max_duration) modulo the melody's length."""
        from audiocraft.modules.conditioners import WavCondition

        stems = self.stems_for(model)  # [1, 1, L]
        length, start = stems.shape[-1], int(time_offset_s * model.sample_rate)
        target = int(model.max_duration * model.sample_rate)
        positions = torch.arange(start, start + target, device=stems.device)
        self.windowed = True
        return WavCondition(
            stems[..., positions % length],
            torch.tensor([target], device=stems.device),
            [model.sample_rate],
            [None],
            [0.0],
        )  # wav [1, 1, target]

    def decoding(self, model):
        """Wrap each window's LM call: once conditions come from `condition_for_window`, the
        conditioner must not separate them a second time. A no-op before that (one window)."""
        return stems_precomputed(model) if self.windowed else nullcontext()


def separated_melody(model, wav: torch.Tensor) -> SeparatedMelody:
    """The melody condition of a request: wav [1, C, T] at the model's rate and channel count."""
    return SeparatedMelody(wav)


@contextmanager
def stems_precomputed(model) -> Iterator[None]:
    """While active, the model's stem conditioner takes its input as already separated (our
    `separate` output, mono at its own rate) and only computes the chroma. Restored on exit, also
    on errors, so a later request with a raw melody is separated as usual. The engine serves one
    request at a time, so no other generation can observe the switch."""
    conditioner = stem_conditioner(model)
    if conditioner is None:
        yield
        return

    def already_separated(wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        assert sample_rate == conditioner.sample_rate, "separated melody must be at the conditioner's rate"
        return wav  # [B, 1, T]

    conditioner._get_stemmed_wav = already_separated  # instance attribute shadows the method
    try:
        yield
    finally:
        del conditioner._get_stemmed_wav
