"""From a request to tokens to a waveform, the way Replicate's predictor does it.

The windowing loop for durations past the model's 30 s segment mirrors audiocraft's
`MusicGen._generate_tokens` (extend_stride 18: re-prompt with the last 12 s, advance 18 s) but
lives here so that (a) the per-window LM call goes through a swappable `decoder`
(audiocraft's `LMModel.generate` or our fast one), (b) progress counts steps over the whole
request, and (c) the melody condition for each window comes from a `melody` object that can
reuse one stem separation for every window.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import Cancelled, UserError
from .api import Hooks, Request
from .melody import separated_melody

EXTEND_STRIDE_S = 18  # Replicate's predictor keeps audiocraft's default
Decoder = Callable[..., torch.Tensor]  # the signature of audiocraft's LMModel.generate


def reference_decoder(lm, prompt, attributes, **kwargs) -> torch.Tensor:
    return lm.generate(prompt, attributes, **kwargs)


# ------------------------------------------------------------------------------------------ seeds


def resolve_seed(seed: int | None) -> int:
    """Replicate: None, -1 and 0 all mean "draw one"; the drawn seed is reported so it can be reused."""
    if not seed or seed == -1:
        return random.SystemRandom().randrange(1, 2**32 - 1)
    return seed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------ melody


class Melody(Protocol):
    def condition_for_window(self, model, time_offset_s: float) -> Any:
        """The WavCondition for the window starting at time_offset_s."""

    def decoding(self, model) -> AbstractContextManager:
        """Entered around each windowed LM call (e.g. to skip a separation already done)."""


# ------------------------------------------------------------------------------------------ tokens


def window_plan(total: int, prompt: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(frame offset, prompt frames, frames to generate incl. prompt) for each LM call, following
    audiocraft's loop arithmetic exactly."""
    if total <= window:
        return [(0, prompt, total)]
    plan, offset = [], 0
    while offset + prompt < total:
        gen = min(total - offset, window)
        plan.append((offset, prompt, gen))
        prompt = gen - stride
        offset += stride
    return plan


@dataclass
class TokenPlan:
    """What to decode for one request: its conditions, its prompt and its (<= 30 s) windows."""

    model: Any
    attributes: list  # ConditioningAttributes, one per row
    prompt_tokens: torch.Tensor | None  # [B, K, P] continuation prompt
    windows: list[tuple[int, int, int]]  # window_plan's (frame offset, prompt frames, frames incl. prompt)
    stride: int  # frames between window starts
    steps_total: int  # decoding steps over every window, for progress
    max_delay: int  # the codebook pattern's extra steps per window
    melody: Melody | None = None  # only when the melody spans several windows

    def window_attributes(self, index: int) -> list:
        """The attributes for window `index` (the melody moves with the window)."""
        if self.melody is not None:
            condition = self.melody.condition_for_window(self.model, self.windows[index][0] / self.model.frame_rate)
            for attr in self.attributes:
                attr.wav["self_wav"] = condition
        return self.attributes

    def conditioning(self) -> AbstractContextManager:
        """Entered wherever the conditioners run on window_attributes' output."""
        return self.melody.decoding(self.model) if self.melody is not None else nullcontext()


# decode(window index, prompt tokens or None, frames to generate incl. prompt, progress callback) -> tokens
WindowDecoder = Callable[[int, "torch.Tensor | None", int, Callable[[int, int], None]], torch.Tensor]


def plan_tokens(model, attributes, prompt_tokens, duration: int, melody: Melody | None = None) -> TokenPlan:
    fr = model.frame_rate
    total, window = int(duration * fr), int(min(duration, model.max_duration) * fr)
    stride = int(fr * EXTEND_STRIDE_S)
    prompt_len = 0 if prompt_tokens is None else prompt_tokens.shape[-1]
    if prompt_len >= window:
        raise UserError(f"The continuation prompt ({prompt_len / fr:.1f} s after cropping) must be shorter than "
                        f"`duration` ({duration} s): the output includes the prompt.")
    windows = window_plan(total, prompt_len, window, stride)
    max_delay = max(model.lm.pattern_provider.delays) if hasattr(model.lm.pattern_provider, "delays") else 0
    steps_total = sum(gen - p + max_delay for _, p, gen in windows)
    return TokenPlan(model, attributes, prompt_tokens, windows, stride, steps_total, max_delay,
                     melody if len(windows) > 1 else None)


def run_windows(plan: TokenPlan, decode: WindowDecoder, hooks: Hooks) -> torch.Tensor:
    """Tokens [B, K, T] for the whole plan (prompt included): each window re-prompted with the last
    (window - stride) frames of the one before, as audiocraft does."""
    steps_before = 0

    def callback(step: int, _steps_in_window: int) -> None:
        if hooks.is_cancelled():
            raise Cancelled()
        hooks.on_progress(steps_before + step, plan.steps_total)

    prompt_tokens = plan.prompt_tokens
    chunks = [] if prompt_tokens is None else [prompt_tokens]
    for index, (_, p, gen) in enumerate(plan.windows):
        tokens = decode(index, prompt_tokens, gen, callback)
        chunks.append(tokens[..., p:])
        steps_before += gen - p + plan.max_delay
        prompt_tokens = tokens[..., plan.stride :]
    return torch.cat(chunks, dim=-1)


def window_decoder(plan: TokenPlan, params: dict, decoder: Decoder) -> WindowDecoder:
    """Each window through `decoder` (audiocraft's LMModel.generate or its drop-in), in this thread."""

    def decode(index: int, prompt_tokens, max_gen_len: int, callback) -> torch.Tensor:
        attributes = plan.window_attributes(index)
        with plan.model.autocast, plan.conditioning():
            return decoder(plan.model.lm, prompt_tokens, attributes, max_gen_len=max_gen_len, callback=callback,
                           **params)

    return decode


def generate_tokens(model, attributes, prompt_tokens, duration: int, params: dict, decoder: Decoder,
                    hooks: Hooks, melody: Melody | None = None) -> torch.Tensor:
    """Tokens [B, K, T] for `duration` seconds (prompt included), windowed past max_duration."""
    plan = plan_tokens(model, attributes, prompt_tokens, duration, melody)
    return run_windows(plan, window_decoder(plan, params, decoder), hooks)


# ------------------------------------------------------------------------------------------ request


def sampling_params(request: Request) -> dict:
    """Request → audiocraft's generation params; the rest are audiocraft's defaults, as on Replicate."""
    return {"use_sampling": True, "temp": request.temperature, "top_k": request.top_k, "top_p": request.top_p,
            "cfg_coef": request.classifier_free_guidance, "two_step_cfg": False}


def plan_request(model, request: Request, audio) -> TokenPlan:
    """Text, continuation or melody conditions and windows; `audio` is the cropped (wav [C, T], sr) or None.

    Runs the codec on a continuation prompt but no conditioner yet (that happens per window)."""
    from audiocraft.data.audio_utils import convert_audio

    descriptions = [request.prompt]
    melody = None
    if audio is None:
        attributes, prompt_tokens = model._prepare_tokens_and_attributes(descriptions, None)
    else:
        wav = convert_audio(audio[0][None].to(model.device), audio[1], model.sample_rate, model.audio_channels)
        if request.continuation:  # [1, C, T]: encoded as the prompt; melody models get an empty melody
            attributes, prompt_tokens = model._prepare_tokens_and_attributes(descriptions, wav)
        else:
            attributes, prompt_tokens = model._prepare_tokens_and_attributes(descriptions, None, [wav[0]])
            melody = separated_melody(model, wav)  # separated once, however many windows
    return plan_tokens(model, attributes, prompt_tokens, request.duration, melody)


def generate_audio_tokens(model, request: Request, audio, decoder: Decoder, hooks: Hooks) -> torch.Tensor:
    """The request's tokens [1, K, T], every window decoded by `decoder` in this thread."""
    plan = plan_request(model, request, audio)
    return run_windows(plan, window_decoder(plan, sampling_params(request), decoder), hooks)


def encode_decode(codec, wav: torch.Tensor, sr: int) -> torch.Tensor:
    """EnCodec round trip of wav [C, T] at the codec's rate, each channel on its own: [1, C, T]."""
    from audiocraft.data.audio_utils import convert_audio

    channels = wav.shape[0]
    x = convert_audio(wav, sr, codec.sample_rate, channels)  # [C, T]
    x = x[:, None, :].to(next(codec.parameters()).device)  # channels as a batch of mono: [C, 1, T]
    codes, scale = codec.encode(x)
    out = codec.decode(codes, scale)  # [C, 1, T']
    return out[:, 0, : x.shape[-1]][None]
