"""Melody conditioning: one stem separation per request, its random shift from the request's own RNG.

The separation itself (htdemucs with its shift drawn from the request's `random.Random(seed)`, and the
switch that tells the conditioner its input is already separated) is `musicgen_local.stems`, which the
trainer uses too.

Past 30 s, `MusicGen._generate_tokens` tiles the *raw* melody for each window and the conditioner
separates it all over again, once per window. Here the whole melody is separated once and each
window tiles the *separated* signal exactly as audiocraft tiles the raw one. The conditioner is then
told, while it conditions, that its input is already separated, so it only computes the chroma.
"""

from __future__ import annotations

import torch

from ..stems import CONDITION, separate, stem_conditioner, stems_precomputed

__all__ = ["CONDITION", "separate", "stem_conditioner", "stems_precomputed", "window_condition"]


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
