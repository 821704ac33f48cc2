"""The engine's whole interface: a `Request` in, a `Run` of plain events out.

predict.py, the v1 server, the CLI and the Ray replicas drive requests through `EngineClient.submit` (and
trainings through `train`); besides, the v1 server reads an engine's `capacity` (runs worth having in
flight) where it has one, lists its `hardware` and keeps deployments' models resident with `keep`/`let_go`,
and a Ray replica waits on `LocalEngine.wait_ready` before taking traffic.
Events are frozen dataclasses of plain values (no tensors, no callables), so a Run can cross a
process or network boundary unchanged.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import Cancelled, EngineError, UserError, WeightsMissingError

if TYPE_CHECKING:
    from ..training.params import TrainingInput


@dataclass(frozen=True)
class Request:
    """A schema-validated prediction input (see schema.FIELDS for meanings and defaults)."""

    model_version: str = "stereo-melody-large"
    prompt: str | None = None
    input_audio: str | None = None  # http(s) URL, data: URI, or a local path vouched for by the front door
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
    # Not a schema input: the fine-tune to decode with (a `musicgen_local.tuned` tar or folder, whose base is
    # `model_version`), set by the front door from the version asked for; None: the published weights.
    weights: str | None = None
    # Not a schema input: what the fine-tune is called where it is shown (/health-check, /metrics): the front door
    # names it by its version (`owner/name:id`); None: by the folder it is unpacked in (never a path).
    tune: str | None = None
    # Not a schema input: the waveform as it was decoded (float32 samples, neither normalised nor encoded), for the
    # engine's own use (the looper's generations).
    raw: bool = False

    @classmethod
    def from_input(cls, inp: Any) -> Request:
        """From schema.PredictionInput (or any mapping of the same names)."""
        data = inp.model_dump() if hasattr(inp, "model_dump") else dict(inp)
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_seed(self) -> Request:
        """This request with a concrete seed. Replicate: None, -1 and 0 all mean "draw one"; the drawn
        seed is reported, so that the same request can be made again with it."""
        if self.seed not in (None, -1, 0):
            return self
        return replace(self, seed=random.SystemRandom().randrange(1, 2**32 - 1))


@dataclass(frozen=True)
class LoopRequest:
    """A schema-validated input of andreasjansson/musicgen-looper (see looper/schema.py for meanings)."""

    prompt: str
    bpm: float = 140
    variations: int = 4
    max_duration: int = 8
    model_version: str = "medium"
    top_k: int = 250
    top_p: float = 0.0
    temperature: float = 1.0
    classifier_free_guidance: int = 3
    output_format: str = "wav"
    seed: int | None = None
    KIND = "loop"  # how a stored request says it is one (request_from_record)

    @classmethod
    def from_input(cls, inp: Any) -> LoopRequest:
        return cls(**(inp.model_dump() if hasattr(inp, "model_dump") else dict(inp)))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kind": self.KIND}

    def with_seed(self) -> LoopRequest:
        """A concrete seed (the looper's -1 and None mean "draw one"; 0 is a seed)."""
        if self.seed not in (None, -1):
            return self
        return replace(self, seed=random.SystemRandom().randrange(0, 2**32 - 1))


def request_from_record(record: dict[str, Any]) -> Request | LoopRequest:
    """The engine request a front door kept (`as_dict`) for a run."""
    record = dict(record)
    if record.pop("kind", None) == LoopRequest.KIND:
        return LoopRequest(**record)
    return Request(**record)


@dataclass(frozen=True)
class Result:
    audio: bytes  # the encoded file: wav (PCM 16-bit) or mp3, normalised (a `raw` request's: float32 samples)
    format: str  # "wav" or "mp3" ("f32" for a raw request)
    seed: int  # the seed actually used (random seeds are drawn and reported)
    sample_rate: int
    channels: int
    num_samples: int
    outputs: dict[str, bytes] = field(default_factory=dict)  # named files, for a model whose output is an object

    @property
    def filename(self) -> str:
        return f"out.{self.format}"

    def files(self) -> dict[str | None, tuple[str, bytes]]:
        """Output name (None: the one output) -> (file name, bytes)."""
        if self.outputs:
            return {name: (f"{name}.{self.format}", data) for name, data in self.outputs.items()}
        return {None: (self.filename, self.audio)}


# ------------------------------------------------------------------------------------------ events


@dataclass(frozen=True)
class Started:
    """The device loop admitted the request: it is being generated now (Replicate's `processing`)."""


@dataclass(frozen=True)
class Log:
    line: str


@dataclass(frozen=True)
class Progress:
    done: int  # decoding steps done, over every window (a training's: optimizer updates)
    total: int
    loss: float | None = None  # a training's loss at `done`


@dataclass(frozen=True)
class Audio:
    """A segment of the audio while it is generated: not normalised, before MBD when MBD is asked for.
    Segments are numbered from 0 and, in order, cover the clip from its start without gaps."""

    index: int
    start_s: float
    wav: bytes  # a complete WAV file (32-bit float PCM) holding this segment only
    sample_rate: int
    channels: int
    num_samples: int


@dataclass(frozen=True)
class Done:
    result: Result


@dataclass(frozen=True)
class Failed:
    message: str  # says what went wrong and what to do next
    kind: str = "user"  # "user": the request; "weights": missing checkpoints; "internal": a bug or the system


@dataclass(frozen=True)
class Canceled:
    pass


@dataclass(frozen=True)
class TrainingRequest:
    """A training: its inputs (parsed once, at the front door), where the dataset is, where to work and where to
    write the fine-tune's tar. The same `work_dir` after a restart resumes the training."""

    params: TrainingInput
    dataset: str  # dataset_path resolved: an http(s) URL, a data: URI, or a local path vouched for by the front door
    work_dir: str
    weights_out: str

    def as_record(self) -> dict[str, Any]:
        """Plain values, to be kept (a server stores them with the training, for its restarts)."""
        return {**asdict(self), "params": self.params.model_dump()}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TrainingRequest:
        """From `as_record`'s values. They were validated when the training was created, so they are not parsed
        again (`input` is the name records of earlier versions keep them under)."""
        from ..training.params import TrainingInput

        record = dict(record)
        params = TrainingInput.model_construct(**record.pop("params", None) or record.pop("input"))
        return cls(params, **record)


@dataclass(frozen=True)
class Trained:
    """A training's end: its fine-tune written at `weights` (a `musicgen_local.tuned` tar)."""

    weights: str
    kind: str  # "lora" or "full"
    base: str  # the model_version it was tuned from
    metrics: dict[str, float]


Event = Started | Log | Progress | Audio | Done | Trained | Failed | Canceled
TERMINAL = (Done, Trained, Failed, Canceled)


class Run(Protocol):
    """One submitted request. Iterate it (once) for its events; the last is terminal."""

    def __iter__(self) -> Iterator[Event]: ...

    def __aiter__(self) -> AsyncIterator[Event]: ...

    def cancel(self) -> None:
        """Ask for the run to end `Canceled`; safe at any time, from any thread, more than once."""


class EngineClient(Protocol):
    def submit(self, request: Request | LoopRequest, *, stream: bool = False) -> Run:
        """Start a request (a loop's: its variations, each a file of `Result.outputs`). With `stream`, `Audio`
        segments come as soon as their tokens are final."""
        ...

    def train(self, request: TrainingRequest) -> Run:
        """Start a training: Started, Log (progress lines), Progress (optimizer updates), then Trained."""
        ...

    def health(self) -> dict[str, Any]:
        """At least {"status": "STARTING" | "READY" | "UNHEALTHY"}; more detail per implementation."""
        ...

    def hardware(self) -> list[dict[str, str]]:
        """The devices a deployment may run on, as GET /v1/hardware lists them: [{"sku": ..., "name": ...}]."""
        ...

    def keep(self, name: str, model_version: str, weights: str | None, device: str, tune: str | None = None) -> Future:
        """Keep deployment `name`'s model (and a LoRA fine-tune's adapter, its predictions' `tune`) resident on
        `device` (a hardware sku) until `let_go(name)`; a second call for the same name replaces the first once its
        model is resident. Resolves to a note, or raises why not."""
        ...

    def let_go(self, name: str) -> None:
        """Deployment `name` keeps nothing resident any more (safe when it kept nothing)."""
        ...

    def close(self) -> None: ...


def failure(exc: Exception) -> Failed | Canceled:
    """The terminal event for an exception raised while serving a request."""
    if isinstance(exc, Cancelled):
        return Canceled()
    if isinstance(exc, UserError):
        return Failed(str(exc))
    if isinstance(exc, WeightsMissingError):
        return Failed(str(exc), kind="weights")
    if isinstance(exc, EngineError):
        return Failed(str(exc), kind="internal")
    # Not the exception's text: it may name this server's files (a path in an OSError); the log has it all.
    return Failed(f"Internal error while generating ({type(exc).__name__}); see the server log.", kind="internal")


def terminal_error(event: Failed | Canceled) -> Exception:
    """The exception a blocking caller raises for a terminal event that is not Done."""
    if isinstance(event, Canceled):
        return Cancelled()
    kind = {"user": UserError, "weights": WeightsMissingError}.get(event.kind, EngineError)
    return kind(event.message)


def result_of(run: Run) -> Result:
    """Block until the run ends; its Result, or the error its terminal event stands for."""
    for event in run:
        if isinstance(event, Done):
            return event.result
        if isinstance(event, Failed | Canceled):
            raise terminal_error(event)
    raise EngineError("The run ended without a result.")
