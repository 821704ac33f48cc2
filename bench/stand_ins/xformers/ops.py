"""The names audiocraft takes from xformers.ops."""

import torch


def unbind(x: torch.Tensor, dim: int):
    return torch.unbind(x, dim=dim)


class LowerTriangularMask:
    """Only ever compared against None by audiocraft's torch backend."""


def memory_efficient_attention(query, key, value, attn_bias=None, p: float = 0.0, **kwargs):
    """Imported by audiocraft's start-up check; called only by its 'xformers' backend, which MusicGen does not use."""
    raise RuntimeError("xformers is a stand-in on the GPU check (bench/stand_ins): use the 'torch' attention backend")
