"""The engine's whole interface: plain data in, plain data out, no tensors.

predict.py, the v1 server and the CLI call `Engine.generate` and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Request:
    """A schema-validated prediction input (see schema.FIELDS for meanings and defaults)."""

    model_version: str = "stereo-melody-large"
    prompt: str | None = None
    input_audio: str | None = None  # local path, http(s) URL or data: URI
    duration: int = 8
    continuation: bool = False
    continuation_start: int = 0
    continuation_end: int | None = None
    multi_band_diffusion: bool = False
    normalization_strategy: str = "loudness"
    top_k: int = 250
    top_p: float = 0.0
    temperature: float = 1.0
    classifier_free_guidance: int = 3
    output_format: str = "wav"
    seed: int | None = None

    @classmethod
    def from_input(cls, inp: Any) -> Request:
        """From schema.PredictionInput (or any mapping of the same names)."""
        data = inp.model_dump() if hasattr(inp, "model_dump") else dict(inp)
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Result:
    path: Path  # the encoded audio file: out.wav or out.mp3
    seed: int  # the seed actually used (random seeds are drawn and reported)
    sample_rate: int
    channels: int
    num_samples: int


def _no_progress(done: int, total: int) -> None:
    pass


def _no_log(line: str) -> None:
    pass


def _never() -> bool:
    return False


@dataclass
class Hooks:
    """How the engine talks back while it works: from the thread that called `generate`, or, while
    it decodes in a batch, from the batching thread; never from two threads at once."""

    on_progress: Callable[[int, int], None] = _no_progress  # (steps done, steps in total)
    on_log: Callable[[str], None] = _no_log  # one line for the prediction's logs
    is_cancelled: Callable[[], bool] = _never  # checked between decoding steps
    extra: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    concurrency: int  # how many `generate` calls are worth running at once (threads the server gives it)

    def generate(self, request: Request, out_dir: Path, hooks: Hooks | None = None) -> Result:
        """Validate semantically, generate, normalise and encode into out_dir; return the file.

        Raises UserError (a failed prediction with its message), WeightsMissingError, Cancelled.
        """
        ...

    def health(self) -> dict[str, Any]:
        ...
