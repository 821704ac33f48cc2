"""LoRA adapters on an audiocraft LMModel, for training: our own small module rather than `peft`.

Why not peft: serving applies each request's adapter per row inside our own decoder
(`engine/fast/model.py`), which reads the weight matrices directly, so an adapter must be the raw
(A, B) pair per weight, in the `tuned` format; and audiocraft's attention keeps q/k/v in one
`in_proj_weight` Parameter used through `F.linear`, not an `nn.Linear` peft's layers would wrap.

An adapter here is only its tensors: the LM is frozen and left untouched (nothing is registered on
it), and the trainer's own forward (training.forward) adds `alpha / r * (x @ A^T) @ B^T` after each
target's base product, so the frozen weight is never rebuilt nor given a gradient.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..tuned import TARGETS


class LowRank(nn.Module):
    """One target's adapter: A [r, in] small random, B [out, r] zero at first, and its scale alpha / r."""

    def __init__(self, weight: torch.Tensor, rank: int, scale: float, generator: torch.Generator) -> None:
        super().__init__()
        out_features, in_features = weight.shape
        a = torch.empty(rank, in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)  # as nn.Linear initialises
        self.lora_A = nn.Parameter(a.to(weight.device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=weight.device))
        self.scale = scale


def target_names(lm) -> list[str]:
    """Every target weight of this LM, by its parameter name."""
    names = []
    for i, layer in enumerate(lm.transformer.layers):
        for target in TARGETS:
            owner, _, attr = target.rpartition(".")
            module = layer
            for part in owner.split("."):
                module = getattr(module, part, None)  # cross_attention is None in a model without it
            if module is not None and isinstance(getattr(module, attr, None), torch.Tensor):
                names.append(f"transformer.layers.{i}.{target}")
    return names + [f"linears.{k}.weight" for k in range(len(lm.linears))]


def _owner(lm, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return lm.get_submodule(path), attr


def attach(lm, rank: int, alpha: float, generator: torch.Generator) -> dict[str, LowRank]:
    """Freeze the LM and make a LoRA for every target weight; returns name -> its LowRank."""
    for p in lm.parameters():
        p.requires_grad_(False)
    adapters = {}
    for name in target_names(lm):
        module, attr = _owner(lm, name)
        adapters[name] = LowRank(getattr(module, attr), rank, alpha / rank, generator)
    return adapters


def parameters(adapters: dict[str, LowRank]) -> list[nn.Parameter]:
    return [p for m in adapters.values() for p in m.parameters()]


def load(adapters: dict[str, LowRank], tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for name, low_rank in adapters.items():
            a, b = tensors[name]
            low_rank.lora_A.copy_(a)
            low_rank.lora_B.copy_(b)


def tensors(adapters: dict[str, LowRank]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name -> (A, B), detached float32 copies on the CPU (what `tuned.write_lora` takes)."""
    return {
        name: (m.lora_A.detach().float().cpu().clone(), m.lora_B.detach().float().cpu().clone())
        for name, m in adapters.items()
    }


class Fixed(nn.Module):
    """A trained adapter, applied: W -> W + scale * B @ A (nothing to learn)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.register_buffer("delta", scale * (b.float() @ a.float()))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta.to(weight.dtype)


@contextmanager
def applied(lm, tensors: dict[str, tuple[torch.Tensor, torch.Tensor]], scale: float):
    """The LM with a trained adapter for the duration of the block (audiocraft's own loop decoding one
    fine-tuned request), then exactly itself again."""
    device = next(lm.parameters()).device
    names = []
    try:
        for name, (a, b) in tensors.items():
            module, attr = _owner(lm, name)
            parametrize.register_parametrization(module, attr, Fixed(a.to(device), b.to(device), scale), unsafe=True)
            names.append(name)
        yield lm
    finally:
        for name in names:
            module, attr = _owner(lm, name)
            parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
