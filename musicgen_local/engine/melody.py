"""Melody conditioning: one stem separation per request, its random shift from the request's own RNG.

audiocraft's `ChromaStemConditioner` turns a melody into a condition in two stages: htdemucs keeps
the vocals + other stems (`_get_stemmed_wav`), then a chroma is computed from them. htdemucs shifts
its input by a random 0-0.5 s drawn from Python's global `random`, so two requests separating at
the same time would draw each other's shifts. `separate` mirrors `_get_stemmed_wav` and demucs'
`apply_model` shift exactly, with the shift drawn from the request's `random.Random(seed)`: alone or
next to others, a request separates its melody the same way (and as audiocraft does after
`random.seed(seed)`).

Past 30 s, `MusicGen._generate_tokens` tiles the *raw* melody for each window and the conditioner
separates it all over again, once per window. Here the whole melody is separated once and each
window tiles the *separated* signal exactly as audiocraft tiles the raw one. The conditioner is then
told, while it conditions, that its input is already separated, so it only computes the chroma.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

CONDITION = "self_wav"  # the attribute audiocraft's melody models condition on


def stem_conditioner(model) -> Any | None:
    """The melody model's ChromaStemConditioner, or None for models without melody conditioning."""
    conditioners = model.lm.condition_provider.conditioners  # an nn.ModuleDict
    return conditioners[CONDITION] if CONDITION in conditioners else None  # noqa: SIM401 (no .get)


def separate(model, wav: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """wav [1, C, T] at the model's rate -> the melody stems (vocals + other), [1, 1, T] at the
    conditioner's rate: what the conditioner computes before its chroma, on the same input it would
    get (ConditioningProvider averages the channels to mono before the conditioner sees them)."""
    from demucs.audio import convert_audio

    conditioner = stem_conditioner(model)
    demucs = conditioner.demucs
    mono = wav.mean(dim=1, keepdim=True).to(conditioner.device)  # [1, 1, T]
    with conditioner.autocast:
        mix = convert_audio(mono, model.sample_rate, demucs.samplerate, demucs.audio_channels)
        stems = _apply_shifted(demucs, mix, torch.device(conditioner.device), rng)[:, conditioner.stem_indices]
        return convert_audio(stems.sum(1), demucs.samplerate, conditioner.sample_rate, 1)  # [1, 1, T]


def _apply_shifted(model, mix: torch.Tensor, device: torch.device, rng: random.Random) -> torch.Tensor:
    """demucs' `apply_model(model, mix)` with its defaults (one random shift, split, overlap 0.25),
    the shift drawn from `rng`: [B, sources, C, T]."""
    from demucs.apply import BagOfModels, TensorChunk, apply_model

    if isinstance(model, BagOfModels):  # each model of the bag with its own shift, weighted per source
        estimates, totals = 0.0, [0.0] * len(model.sources)
        for sub_model, weights in zip(model.models, model.weights, strict=True):
            home = next(iter(sub_model.parameters())).device
            sub_model.to(device)
            out = _apply_shifted(sub_model, mix, device, rng)
            sub_model.to(home)
            for k, weight in enumerate(weights):
                out[:, k, :, :] *= weight
                totals[k] += weight
            estimates += out
        for k in range(estimates.shape[1]):
            estimates[:, k, :, :] /= totals[k]
        return estimates
    model.to(device).eval()
    length = mix.shape[-1]
    max_shift = int(0.5 * model.samplerate)
    padded = TensorChunk(mix).padded(length + 2 * max_shift)
    offset = rng.randint(0, max_shift)
    shifted = TensorChunk(padded, offset, length + max_shift - offset)
    return apply_model(model, shifted, shifts=0, split=True, overlap=0.25, device=device)[..., max_shift - offset :]


def window_condition(model, stems: torch.Tensor, time_offset_s: float, windowed: bool):
    """The WavCondition a window conditions on. One window: the separated melody as it is (the
    conditioner pads or trims its chroma to 30 s, as it does with a raw melody). Several windows: the
    melody tiled over the window starting at time_offset_s, as audiocraft tiles the raw one: samples
    [offset, offset + max_duration) modulo the melody's length."""
    from audiocraft.modules.conditioners import WavCondition

    if not windowed:
        return WavCondition(
            stems, torch.tensor([stems.shape[-1]], device=stems.device), [model.sample_rate], [None], [0.0]
        )
    length, start = stems.shape[-1], int(time_offset_s * model.sample_rate)
    target = int(model.max_duration * model.sample_rate)
    positions = torch.arange(start, start + target, device=stems.device)
    return WavCondition(
        stems[..., positions % length], torch.tensor([target], device=stems.device), [model.sample_rate], [None], [0.0]
    )  # wav [1, 1, target]


@contextmanager
def stems_precomputed(model) -> Iterator[None]:
    """While active, the model's stem conditioner takes its input as already separated (`separate`'s
    output, mono at its own rate) and only computes the chroma. Restored on exit, also on errors.
    Only the device loop that owns the model conditions with it, so nothing else sees the switch."""
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
