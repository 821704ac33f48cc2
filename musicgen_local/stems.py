"""A melody model's stem separation, its random shift drawn from a generator the caller owns.

audiocraft's `ChromaStemConditioner` turns a melody into a condition in two stages: htdemucs keeps
the vocals + other stems (`_get_stemmed_wav`), then a chroma is computed from them. htdemucs shifts
its input by a random 0-0.5 s drawn from Python's global `random`, so two requests separating at
the same time would draw each other's shifts (and a training would move the process' generator).
`separate` mirrors `_get_stemmed_wav` and demucs' `apply_model` shift exactly, with the shift drawn
from the caller's `random.Random`: alone or next to others, a request separates its melody the same
way (and as audiocraft does after `random.seed(seed)`). `stems_precomputed` then tells the
conditioner that its input is already separated, so it only computes the chroma.

Used by the engine (engine/melody.py: a request's melody) and the trainer (training/conditions.py: each
piece's own audio, once), so it lives below both.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
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
    with conditioner.autocast, position_shifts_from(demucs, rng):
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


@contextmanager
def position_shifts_from(model, rng: random.Random) -> Iterator[None]:
    """htdemucs' cross-transformer draws a shift of its sinusoidal positions from Python's global `random` at
    every forward (`randrange(sin_random_shift + 1)`: always 0 with the published weights, yet a draw that moves
    the process' generator under whoever else uses it). While active, each of `model`'s transformers draws it
    from `rng` instead, and draws nothing when it can only be 0. An instance attribute, as `stems_precomputed`:
    only the thread that owns this model separates with it."""
    from demucs.transformer import CrossTransformerEncoder

    patched = [m for m in model.modules() if isinstance(m, CrossTransformerEncoder) and m.emb == "sin"]
    for encoder in patched:
        encoder._get_pos_embedding = partial(_sin_positions, encoder, rng)  # shadows the method
    try:
        yield
    finally:
        for encoder in patched:
            del encoder._get_pos_embedding


def _sin_positions(encoder, rng: random.Random, length: int, batch: int, channels: int, device) -> torch.Tensor:
    """`CrossTransformerEncoder._get_pos_embedding` for its "sin" embedding, the shift drawn from `rng`."""
    from demucs.transformer import create_sin_embedding

    shift = rng.randrange(encoder.sin_random_shift + 1) if encoder.sin_random_shift else 0
    return create_sin_embedding(length, channels, shift=shift, device=device, max_period=encoder.max_period)


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
