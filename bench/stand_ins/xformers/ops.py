"""The two names audiocraft's torch attention backend takes from xformers.ops."""

import torch


def unbind(x: torch.Tensor, dim: int):
    return torch.unbind(x, dim=dim)


class LowerTriangularMask:
    """Only ever compared against None by audiocraft's torch backend."""
