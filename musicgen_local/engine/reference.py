"""The oracle: every window decoded by audiocraft's own `LMModel.generate`, one request at a time,
its randomness from the global RNGs seeded with the request's seed, exactly as Replicate's predictor
does (MUSICGEN_DECODER=reference). The fast decoder must give the same tokens for the same seed."""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import torch

from . import melody as M
from .api import Request
from .plan import Plan


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sampling_params(request: Request) -> dict:
    """Request -> audiocraft's generation params; the rest are audiocraft's defaults, as on Replicate."""
    return {
        "use_sampling": True,
        "temp": request.temperature,
        "top_k": request.top_k,
        "top_p": request.top_p,
        "cfg_coef": request.classifier_free_guidance,
        "two_step_cfg": False,
    }


def generate_tokens(plan: Plan, request: Request, on_step: Callable[[int, int], None]) -> torch.Tensor:
    """Tokens [1, K, T] for the whole request (prompt included): each window re-prompted with the last
    (window - stride) frames of the one before. on_step(done, total) runs after every step; raising
    there (cancellation) stops the decode."""
    params, steps_before = sampling_params(request), 0

    def callback(step: int, _steps_in_window: int) -> None:
        on_step(steps_before + step, plan.steps_total)

    prompt = plan.prompt_tokens
    chunks = [] if prompt is None else [prompt]
    for index, span in enumerate(plan.windows):
        attributes = plan.window_attributes(index)
        with plan.model.autocast, M.stems_precomputed(plan.model) if plan.melody is not None else nullcontext():
            tokens = plan.model.lm.generate(prompt, attributes, max_gen_len=span.frames, callback=callback, **params)
        chunks.append(tokens[..., span.prompt :])
        steps_before += span.frames - span.prompt + plan.max_delay
        prompt = tokens[..., plan.stride :]
    return torch.cat(chunks, dim=-1)
