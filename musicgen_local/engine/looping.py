"""A looper request in the engine: its variations generated as rows of one batch, then cut into loops locked to the
beat by the looper's pipeline (`looper/pipeline.py`), never on the device loop.

One thread of the looper pool drives the request's `LoopSession`: each round's rows (the first tries, then the
re-rolls) are submitted at once as raw generations (`Request.raw`: the waveform as decoded), so the device loop
decodes them together (continuous batching: four variations take little more than one); their waveforms come back
through their runs, and the pipeline's CPU work (beat tracking, Rubber Band, the fold, encoding) runs here.

`audio_of(seed, generated)` is a seam for tests: it replaces what the model generated (tiny random weights make
noise, not music) by audio with a known beat, after the model really generated each row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import Cancelled
from ..looper.pipeline import LoopSession, Row
from ..looper.pipeline import run as run_session
from ..looper.schema import check_semantics
from .api import (
    Canceled,
    Done,
    Failed,
    Log,
    LoopRequest,
    Progress,
    Request,
    Result,
    Started,
    failure,
    terminal_error,
)
from .run import EventQueue

AudioOf = Callable[[int, np.ndarray], np.ndarray]
POLL_S = 0.05


class LoopDriver:
    def __init__(self, submit: Callable[[Request], EventQueue], audio_of: AudioOf | None = None) -> None:
        """submit(request) -> its run: how a generation reaches a device loop (the engine's own submit)."""
        self._submit, self._audio_of = submit, audio_of

    def drive(self, request: LoopRequest, run: EventQueue) -> None:
        """In the looper pool: the whole request, to its terminal event."""
        try:
            check_semantics(request)
            run.emit(Log(f"Using seed {request.seed}"))
            session = LoopSession(
                request.prompt,
                request.bpm,
                request.max_duration,
                request.variations,
                request.seed,
                request.output_format,
                say=lambda line: run.emit(Log(line)),
            )
            started = [False]
            finished = run_session(session, lambda rows: self._generate(request, session, rows, run, started))
            plan = finished.plan
            channels = 1  # the looper's models are mono
            result = Result(b"", finished.extension, request.seed, plan.sample_rate, channels, plan.samples)
            run.emit(Done(Result(**{**vars(result), "outputs": finished.files})))
        except Exception as exc:  # noqa: BLE001 - every failure becomes the run's terminal event
            run.emit(failure(exc))

    def _generate(
        self, request: LoopRequest, session: LoopSession, rows: Sequence[Row], run: EventQueue, started: list[bool]
    ) -> list:
        """One generation per row, submitted together so they decode as one batch; their waveforms [C, T]."""
        seconds = math.ceil(session.generate_seconds)
        subs = [
            self._submit(
                Request(
                    model_version=request.model_version,
                    prompt=session.prompt,
                    duration=seconds,
                    top_k=request.top_k,
                    top_p=request.top_p,
                    temperature=request.temperature,
                    classifier_free_guidance=request.classifier_free_guidance,
                    seed=row.seed,
                    raw=True,
                )
            )
            for row in rows
        ]
        run.emit(Log(f"Generating {len(rows)} variation(s) of {seconds} s as one batch"))
        try:
            waves = _follow(subs, run, started)
        except BaseException:
            for sub in subs:
                sub.cancel()
            raise
        if self._audio_of is not None:
            waves = [self._audio_of(row.seed, wave) for row, wave in zip(rows, waves, strict=True)]
        return waves


def _follow(subs: list[EventQueue], run: EventQueue, started: list[bool]) -> list[np.ndarray]:
    """Every row's waveform, forwarding what the caller should see: Started once (`started[0]`), Progress over every
    row of the round, logs."""
    waves: list[np.ndarray | None] = [None] * len(subs)
    progress = [(0, 1)] * len(subs)
    pending = set(range(len(subs)))
    while pending:
        if run.canceled.is_set():
            raise Cancelled()
        first = min(pending)
        for i in sorted(pending):
            while (event := subs[i].next_event(POLL_S if i == first else 0)) is not None:
                if isinstance(event, Started) and not started[0]:
                    started[0] = True
                    run.emit(Started())
                elif isinstance(event, Progress):
                    progress[i] = (event.done, event.total)
                    run.emit(Progress(sum(d for d, _ in progress), sum(t for _, t in progress)))
                elif isinstance(event, Log) and not event.line.startswith("Using seed"):
                    run.emit(event)
                elif isinstance(event, Done):
                    r = event.result
                    waves[i] = np.frombuffer(r.audio, dtype=np.float32).reshape(r.channels, r.num_samples)
                    pending.discard(i)
                    break
                elif isinstance(event, Failed | Canceled):
                    raise terminal_error(event)
    return waves
