"""A torch-free EngineClient for API tests: the real interface and event order, no model.

Each run: semantic checks (Failed with the real messages), `Log("Using seed N")`, then once one of
`concurrency` slots is free `Started`, one `Progress` per 50 Hz frame (`step_delay_s` apart, checking
cancellation between steps), one `Audio` segment per second when streaming, and `Done` with a real
16-bit PCM wav (silence; 2 channels for stereo models), always wav whatever `output_format` says.

A training: `Started`, `train_steps` Progress/Log pairs (`step_delay_s` apart), then `Trained` with a
LoRA tar that holds no adapter (its version decodes as the base).

Deployments' pins are kept in `pins` (name -> (model_version, weights, device)); one device, `cpu`, has room for
`pin_room` distinct models, and a pin past that is refused with a message naming what it needs, as the real plan
refuses one.
"""

from __future__ import annotations

import io
import random
import threading
import wave
from concurrent.futures import Future

from ..engine.api import (
    Audio,
    Canceled,
    Done,
    Failed,
    Log,
    Progress,
    Request,
    Result,
    Started,
    Trained,
    TrainingRequest,
)
from ..engine.run import EventQueue
from ..errors import EngineError, UserError
from ..registry import PRESETS
from ..schema import check_semantics

SAMPLE_RATE = 32000
FRAME_RATE = 50  # decoding steps per second of audio, as MusicGen's 50 Hz token frames


def silent_wav(seconds: float, channels: int, sample_width: int = 2) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(sample_width)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(bytes(sample_width * channels * int(seconds * SAMPLE_RATE)))
    return buffer.getvalue()


class FakeEngine:
    def __init__(
        self, max_duration: int = 300, step_delay_s: float = 0.0, concurrency: int = 1, ready: bool = True
    ) -> None:
        self.max_duration = max_duration
        self.capacity = 64  # runs worth having in flight: the rest wait in the server's queue
        self.step_delay_s = step_delay_s  # slows generation so tests can cancel or time out mid-way
        self.requests: list[Request] = []  # what the API layer handed over, for assertions
        self.started: list[Request] = []  # those that got a slot and generated (or began to)
        self.trainings: list[TrainingRequest] = []
        self.train_steps = 5
        self.ready = threading.Event()
        if ready:
            self.ready.set()
        self._slots = threading.Semaphore(concurrency)
        self.pins: dict[str, tuple[str, str | None, str, str | None]] = {}  # model_version, weights, device, tune
        self.pin_room = 4

    def hardware(self) -> list[dict[str, str]]:
        return [{"sku": "cpu", "name": "CPU"}]

    def keep(self, name: str, model_version: str, weights: str | None, device: str, tune: str | None = None) -> Future:
        done: Future = Future()
        others = {pin[:2] for other, pin in self.pins.items() if other != name}
        if device != "cpu":
            done.set_exception(UserError(f"This server has no device {device!r}; it has cpu (GET /v1/hardware)."))
        elif len(others | {(model_version, weights)}) > self.pin_room:
            done.set_exception(
                EngineError(
                    f"`{model_version}` needs 1.00 GiB on cpu, but deployments keep {len(others)} models there."
                )
            )
        else:
            self.pins[name] = (model_version, weights, device, tune)
            done.set_result(f"{model_version} is resident on cpu, kept warm for the deployment {name}.")
        return done

    def let_go(self, name: str) -> None:
        self.pins.pop(name, None)

    def submit(self, request: Request, *, stream: bool = False) -> EventQueue:
        self.requests.append(request)
        run = EventQueue()
        threading.Thread(target=self._generate, args=(request, run, stream), daemon=True).start()
        return run

    def train(self, request: TrainingRequest) -> EventQueue:
        self.trainings.append(request)
        run = EventQueue()
        threading.Thread(target=self._train, args=(request, run), daemon=True).start()
        return run

    def _train(self, request: TrainingRequest, run: EventQueue) -> None:
        from pathlib import Path

        from .. import tuned

        run.emit(Started())
        for step in range(1, self.train_steps + 1):
            if run.canceled.wait(self.step_delay_s):
                run.emit(Canceled())
                return
            run.emit(Progress(step, self.train_steps))
            run.emit(Log(f"step {step}/{self.train_steps} (epoch 1/1): loss {1.0 / step:.4f}"))
        base = request.params.model_version
        dest = tuned.write(
            Path(request.weights_out),
            "lora",
            base,
            {tuned.ADAPTER: _empty_safetensors()},
            rank=1,
            alpha=1.0,
            training={"loss": 1.0 / self.train_steps},
        )
        run.emit(Trained(str(dest), "lora", base, {"loss": 1.0 / self.train_steps}))

    def health(self) -> dict:
        return {"status": "READY" if self.ready.is_set() else "STARTING", "engine": "fake"}

    def close(self) -> None:
        pass

    def _generate(self, request: Request, run: EventQueue, stream: bool) -> None:
        try:
            check_semantics(request, self.max_duration)
        except UserError as exc:
            run.emit(Failed(str(exc)))
            return
        seed = request.seed if request.seed not in (None, -1, 0) else random.randint(1, 2**31 - 1)
        run.emit(Log(f"Using seed {seed}"))
        self.ready.wait()
        while not self._slots.acquire(timeout=0.01):  # queued for a slot, as in the device loop
            if run.canceled.is_set():
                run.emit(Canceled())
                return
        try:
            if run.canceled.is_set():
                run.emit(Canceled())
                return
            run.emit(Started())
            self.started.append(request)
            self._steps(request, run, stream)
            if run.canceled.is_set():
                run.emit(Canceled())
                return
        finally:
            self._slots.release()
        channels = PRESETS[request.model_version].channels or 1
        result = Result(
            silent_wav(request.duration, channels), "wav", seed, SAMPLE_RATE, channels, request.duration * SAMPLE_RATE
        )
        run.emit(Done(result))

    def _steps(self, request: Request, run: EventQueue, stream: bool) -> None:
        channels = PRESETS[request.model_version].channels or 1
        steps = request.duration * FRAME_RATE
        for step in range(1, steps + 1):
            if run.canceled.wait(self.step_delay_s):
                return
            run.emit(Progress(step, steps))
            if stream and step % FRAME_RATE == 0:
                index = step // FRAME_RATE - 1
                run.emit(Audio(index, float(index), silent_wav(1.0, channels, 4), SAMPLE_RATE, channels, SAMPLE_RATE))


def _empty_safetensors() -> bytes:
    """A safetensors file with no tensor: 8 bytes of header length, then the header `{}`."""
    return (2).to_bytes(8, "little") + b"{}"
