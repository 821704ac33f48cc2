"""From a request to what the LM decodes: conditions, continuation prompt, and 30 s windows.

Past the model's 30 s segment, windows follow audiocraft's `MusicGen._generate_tokens` exactly
(extend_stride 18: each window re-prompted with the last 12 s of the one before, advancing 18 s),
but the windows are ours so that either decoder runs them, progress counts steps over the whole
request, and a melody is separated once per request rather than once per window.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ..errors import UserError
from . import melody as M
from .api import Request

EXTEND_STRIDE_S = 18  # Replicate's predictor keeps audiocraft's default


class WindowSpan(NamedTuple):
    """One LM call of a request, in frames."""

    start: int  # where the window starts in the request's output
    prompt: int  # frames the window is prompted with (its first `prompt` frames are given, not sampled)
    frames: int  # the window's length, prompt included


def window_plan(total: int, prompt: int, window: int, stride: int) -> list[WindowSpan]:
    """Each LM call of a request, following audiocraft's loop arithmetic exactly."""
    if total <= window:
        return [WindowSpan(0, prompt, total)]
    plan, offset = [], 0
    while offset + prompt < total:
        gen = min(total - offset, window)
        plan.append(WindowSpan(offset, prompt, gen))
        prompt = gen - stride
        offset += stride
    return plan


@dataclass
class Plan:
    """What to decode for one request."""

    model: Any  # audiocraft MusicGen
    attributes: list  # ConditioningAttributes of the one request
    prompt_tokens: torch.Tensor | None  # [1, K, P] continuation prompt
    windows: list[WindowSpan]
    stride: int  # frames between window starts
    max_delay: int  # the codebook pattern's extra steps per window
    melody: torch.Tensor | None = None  # separated stems [1, 1, T] of a melody request

    @property
    def steps_total(self) -> int:
        """Decoding steps over every window, for progress (the reference's callback counts)."""
        return sum(w.frames - w.prompt + self.max_delay for w in self.windows)

    def window_attributes(self, index: int) -> list:
        """The attributes for window `index`: the melody moves with the window."""
        if self.melody is not None:
            offset_s = self.windows[index].start / self.model.frame_rate
            condition = M.window_condition(self.model, self.melody, offset_s, windowed=len(self.windows) > 1)
            for attr in self.attributes:
                attr.wav[M.CONDITION] = condition
        return self.attributes

    def window_conditions(self, index: int) -> dict:
        """The condition tensors of window `index`, conditional then unconditional (LMModel's CFG layout)."""
        attributes = self.window_attributes(index)
        with M.stems_precomputed(self.model) if self.melody is not None else contextlib.nullcontext():
            return condition_tensors(self.model.lm, attributes)


def condition_tensors(lm, attributes: list) -> dict:
    """The condition tensors of `attributes` followed by their null (unconditional) copies, as LMModel
    lays them out for classifier-free guidance."""
    from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout

    provider = lm.condition_provider
    null = ClassifierFreeGuidanceDropout(p=1.0)(attributes)
    return provider(provider.tokenize(attributes + null))


def plan_request(model, request: Request, clip: torch.Tensor | None, rng: random.Random) -> Plan:
    """Conditions, prompt and windows; `clip` is the cropped input [C, T] at the model's rate and
    channel count, or None. Encodes a continuation prompt and separates a melody (GPU work)."""
    descriptions = [request.prompt]
    stems = None
    if clip is None or request.continuation:
        wav = None if clip is None else clip[None].to(model.device)  # [1, C, T]: the continuation prompt
        attributes, prompt_tokens = model._prepare_tokens_and_attributes(descriptions, wav)
    else:
        attributes, prompt_tokens = model._prepare_tokens_and_attributes(descriptions, None, [clip])
        stems = M.separate(model, clip[None].to(model.device), rng)
    fr = model.frame_rate
    total, window = int(request.duration * fr), int(min(request.duration, model.max_duration) * fr)
    prompt_len = 0 if prompt_tokens is None else prompt_tokens.shape[-1]
    if prompt_len >= window:
        raise UserError(
            f"The continuation prompt ({prompt_len / fr:.1f} s after cropping) must be shorter than "
            f"`duration` ({request.duration} s): the output includes the prompt."
        )
    stride = int(fr * EXTEND_STRIDE_S)
    windows = window_plan(total, prompt_len, window, stride)
    max_delay = max(model.lm.pattern_provider.delays)
    return Plan(model, attributes, prompt_tokens, windows, stride, max_delay, stems)
