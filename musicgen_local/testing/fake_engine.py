"""A torch-free Engine for API tests: same interface and behaviour as the real one, no model.

Writes a real 16-bit PCM wav (32 kHz, `duration` seconds, 2 channels for stereo models) with the
stdlib `wave` module, logs "Using seed N", reports one progress step per 50 Hz frame, stops with
Cancelled between steps, and raises UserError through schema.check_semantics like the engine does.
The file is always wav (even for output_format=mp3): the API layer does not look inside it.
"""

from __future__ import annotations

import random
import time
import wave
from pathlib import Path

from ..engine.api import Hooks, Request, Result
from ..errors import Cancelled
from ..schema import check_semantics, parse_input

SAMPLE_RATE = 32000
FRAME_RATE = 50  # decoding steps per second of audio, as MusicGen's 50 Hz token frames


class FakeEngine:
    def __init__(self, max_duration: int = 300, step_delay_s: float = 0.0, concurrency: int = 1) -> None:
        self.max_duration, self.concurrency = max_duration, concurrency
        self.step_delay_s = step_delay_s  # slows generation so tests can cancel or time out mid-way
        self.requests: list[Request] = []  # what the API layer handed over, for assertions

    def generate(self, request: Request, out_dir: Path, hooks: Hooks | None = None) -> Result:
        hooks = hooks or Hooks()
        self.requests.append(request)
        check_semantics(parse_input(request.as_dict()), self.max_duration)
        seed = request.seed if request.seed is not None and request.seed >= 0 else random.randint(0, 2**31 - 1)
        hooks.on_log(f"Using seed {seed}")
        steps = request.duration * FRAME_RATE
        for step in range(1, steps + 1):
            if hooks.is_cancelled():
                raise Cancelled()
            time.sleep(self.step_delay_s)
            hooks.on_progress(step, steps)
        channels = 2 if "stereo" in request.model_version else 1
        num_samples = request.duration * SAMPLE_RATE
        path = Path(out_dir) / "out.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(channels)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            w.writeframes(bytes(2 * channels * num_samples))  # silence
        return Result(path=path, seed=seed, sample_rate=SAMPLE_RATE, channels=channels, num_samples=num_samples)

    def health(self) -> dict:
        return {"engine": "fake"}
