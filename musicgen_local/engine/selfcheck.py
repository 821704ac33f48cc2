"""The fast decoder checked against audiocraft's, on the device and in the dtype it will serve in.

Before a model serves (at warm-up, or when it is loaded), half a second of greedy decoding (top_k 1,
guidance 3, a fixed text) runs through the model's own `SlotBatch` (its captured graphs, its kernels).
Greedy decoding takes the argmax of the guided logits. audiocraft's own `compute_predictions` then
scores that token stream in one teacher-forced pass: for every codebook and frame, how far the chosen
token's guided logit is below the best one, given the same history (the "margin"). A correct decoder
chooses the best token or one within rounding of it; a broken one (a stale graph, a wrong cache
position, a miscompiled kernel) chooses tokens far below it. The check costs the steps of the short
decode and one parallel forward pass.

The tolerance. Both decoders compute the same function in the same dtype and differ only in the
order of their sums and the kernels they use. A dot product of length d in a dtype of unit roundoff u
carries a relative error of about u·√d; through L layers these add up to about u·√(L·d) of the logits'
scale s (their standard deviation). Choosing the other token of a near tie takes both logits moving
that much in opposite directions, so a correct decoder's margins stay below 2·u·√(L·d)·s. Only when
the fast decoder's margins exceed that does audiocraft's own loop (`LMModel.generate`, the same greedy
request) run too, as a second opinion: scored the same way, it shows what this device and dtype
actually give, and 4 times its largest margin is allowed. The check fails when a margin exceeds the
larger bound, or when fewer than 90 % of the fast decoder's tokens are the teacher-forced argmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .fast import SamplingParams, SlotBatch, Window, decode
from .plan import condition_tensors

FRAMES = 25  # half a second: every codebook's delay, 28 steps or more, a small share of a model's warm-up
TEXT = "self-check: warm piano chords over a slow hip hop beat"
CFG = 3.0
MIN_AGREEMENT = 0.9
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


@dataclass(frozen=True)
class Verdict:
    ok: bool
    summary: str
    agreement: float  # fraction of the fast tokens that are the teacher-forced argmax
    max_margin: float  # the fast tokens' largest margin, in units of the logits' standard deviation
    tolerance: float  # the margin allowed, in the same units
    reference_margin: float | None  # audiocraft's own largest margin (asked only when the fast one exceeds rounding)
    same_tokens: float | None  # fraction of (codebook, frame) positions where both greedy streams are equal


def compare(model, batch: SlotBatch, frames: int = FRAMES) -> Verdict:
    """Run the check (inside the device's autocast, as decoding runs)."""
    lm = model.lm
    attributes, _ = model._prepare_tokens_and_attributes([TEXT], None)
    conditions = condition_tensors(lm, attributes)
    generator = torch.Generator(batch.static.device).manual_seed(0)
    window = Window(conditions, None, frames, SamplingParams(temp=1.0, top_k=1, top_p=0.0, cfg_coef=CFG), generator)
    fast = decode(batch, [window])[0]  # [1, K, frames]
    fast_margin, fast_agree, scale = _margins(lm, conditions, fast)
    dtype = _compute_dtype(batch)
    rounding = 2 * UNIT_ROUNDOFF.get(dtype, 2.0**-11) * math.sqrt(len(lm.transformer.layers) * lm.dim)
    ref_margin = same = None
    if fast_margin > rounding or fast_agree < MIN_AGREEMENT:  # a second opinion: what audiocraft's own loop gives
        reference = lm.generate(
            None, attributes, max_gen_len=frames, use_sampling=False, cfg_coef=CFG, two_step_cfg=False
        )
        ref_margin = _margins(lm, conditions, reference)[0]
        same = float((fast == reference).float().mean())
    tolerance = max(rounding, 4 * (ref_margin or 0.0))
    ok = fast_margin <= tolerance and fast_agree >= MIN_AGREEMENT
    summary = (
        f"{frames} greedy steps in {str(dtype).removeprefix('torch.')}: {100 * fast_agree:.1f}% of tokens are "
        f"audiocraft's argmax (at least {100 * MIN_AGREEMENT:.0f}%), largest margin {fast_margin:.2g} "
        f"(tolerance {tolerance:.2g}) of the logits' std {scale:.3g}"
    )
    if ref_margin is not None:
        summary += f"; audiocraft's own loop: margin {ref_margin:.2g}, {100 * same:.1f}% of its tokens the same"
    return Verdict(ok, summary, fast_agree, fast_margin, tolerance, ref_margin, same)


def _margins(lm, conditions: dict, codes: torch.Tensor) -> tuple[float, float, float]:
    """Teacher-forced guided logits of `codes` [1, K, T] by audiocraft's own forward: (largest margin
    of the chosen tokens in units of the logits' std, fraction that are the argmax, that std)."""
    out = lm.compute_predictions(codes.expand(2, -1, -1), [], condition_tensors=conditions)
    logits = out.logits.float()  # [2, K, T, card]: conditional, unconditional
    guided = logits[1] + (logits[0] - logits[1]) * CFG  # [K, T, card]
    valid = out.mask[0]  # [K, T]
    chosen = guided.gather(-1, codes[0].unsqueeze(-1)).squeeze(-1)  # [K, T]
    best = guided.max(dim=-1).values
    margins = (best - chosen)[valid]
    scale = float(guided[valid].std()) or 1.0
    agree = float((margins == 0).float().mean()) if margins.numel() else 1.0
    return float(margins.max()) / scale if margins.numel() else 0.0, agree, scale


def _compute_dtype(batch: SlotBatch) -> torch.dtype:
    """What the step computes in on CUDA: the autocast dtype when autocast is on, else the weights'."""
    device_type = torch.device(batch.static.device).type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return batch.static.dtype
