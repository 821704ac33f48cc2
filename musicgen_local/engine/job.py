"""A request inside the engine, from its preparation to its file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from . import codec
from .api import Log, Request
from .fast import Lora
from .plan import Plan
from .residency import ModelKey
from .run import EventQueue


@dataclass(eq=False)
class Job:
    request: Request  # its seed is fixed (Request.with_seed)
    run: EventQueue
    stream: bool = False
    clip: torch.Tensor | None = None  # the cropped input [C, T] at 32 kHz (prepare pool)
    lora: Lora | None = None  # a LoRA fine-tune of the model: decoded in the model's batch, its rows adapted
    full_tune: str | None = None  # a full fine-tune's folder: a model of its own
    # device loop state
    held: bool = False  # its model is held for it (residency.hold) until it ends or goes to the encode pool
    plan: Plan | None = None
    mbd: Any = None
    generator: torch.Generator | None = None
    window: int = 0  # the window decoding or next to decode
    slot: int | None = None
    codes: torch.Tensor | None = None  # [1, K, F] final frames so far (continuation prompt included)
    prompt: torch.Tensor | None = None  # the next window's prompt codes
    steps_before: int = 0  # decoding steps of finished windows
    segments: codec.SegmentStream | None = None
    batch_logged: int = 1  # the largest batch this request was told it decodes in
    started: bool = False  # Started was emitted

    @property
    def key(self) -> ModelKey:
        """The model this job decodes with."""
        return ModelKey(self.request.model_version, self.full_tune)

    def log(self, line: str) -> None:
        self.run.emit(Log(line))
