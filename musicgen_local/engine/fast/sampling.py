"""Token sampling on the device, consuming the RNG exactly as audiocraft's `_sample_next_token`.

`torch.multinomial(probs, 1)` is implemented by PyTorch as `argmax(probs / Exp(1) noise)` after a
validity check that reads a value back to the host. We draw the same noise tensor (same shape,
same generator, same order), skip the check, and so pick the same token with no host sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    use_sampling: bool = True
    temp: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    cfg_coef: float = 3.0

    @property
    def draws_noise(self) -> bool:
        # the reference samples only when use_sampling and temp > 0; greedy otherwise
        return self.use_sampling and self.temp > 0.0


def draw_noise(rows: int, num_codebooks: int, card: int, device, generator=None) -> torch.Tensor:
    """Exp(1) noise shaped as multinomial sees its input: [rows * K, card] -> [rows, K, card]."""
    noise = torch.empty(rows * num_codebooks, card, device=device).exponential_(1, generator=generator)
    return noise.view(rows, num_codebooks, card)


def guide(cond: torch.Tensor, uncond: torch.Tensor, cfg_coef: float) -> torch.Tensor:
    """Classifier-free guidance, the reference's expression: [b, K, card] each -> [b, K, card]."""
    return uncond + (cond - uncond) * cfg_coef


def sample(logits: torch.Tensor, params: SamplingParams, noise: torch.Tensor | None) -> torch.Tensor:
    """logits [b, K, card] (already guided) -> next tokens [b, K, 1]."""
    if not params.draws_noise:
        return torch.argmax(logits, dim=-1, keepdim=True)
    probs = torch.softmax(logits / params.temp, dim=-1)  # [b, K, card]
    if params.top_p > 0.0:
        probs_sort, probs_idx = torch.sort(probs, dim=-1, descending=True)
        cumulative = torch.cumsum(probs_sort, dim=-1)
        probs_sort *= (~(cumulative - probs_sort > params.top_p)).float()
        probs_sort.div_(probs_sort.sum(dim=-1, keepdim=True))
        choice = torch.argmax(probs_sort / noise, dim=-1, keepdim=True)  # index into the sorted order
        return torch.gather(probs_idx, -1, choice)
    if params.top_k > 0:
        threshold = torch.topk(probs, params.top_k, dim=-1)[0][..., [-1]]  # [b, K, 1]
        probs *= (probs >= threshold).float()
        probs.div_(probs.sum(dim=-1, keepdim=True))
    return torch.argmax(probs / noise, dim=-1, keepdim=True)
