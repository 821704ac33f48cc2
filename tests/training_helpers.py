"""What the fine-tuning tests across rings share: a small dataset, a quick training's inputs, a prediction."""

from __future__ import annotations

import io
import wave
import zipfile
from pathlib import Path

import numpy as np

# A few quick updates at a high learning rate: enough to move a tiny model's tokens, seconds on CPU.
QUICK_TRAINING = {
    "model_version": "large",
    "epochs": 1,
    "updates_per_epoch": 4,
    "batch_size": 2,
    "lr": 0.01,
    "lora_rank": 4,
    "seed": 3,
    "drop_vocals": False,
    "auto_labeling": False,
}
PREDICT = {"prompt": "my sound", "duration": 1, "seed": 11, "model_version": "large"}


def songs_zip(path: Path) -> Path:
    """A zip of two 3 s clips (a chord and noise), each with a description."""
    rate = 32000
    t = np.arange(3 * rate) / rate
    clips = {
        "chord": 0.3 * sum(np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0)) / 3,
        "noise": 0.2 * np.random.default_rng(0).standard_normal(t.size),
    }
    with zipfile.ZipFile(path, "w") as z:
        for name, wav in clips.items():
            buffer = io.BytesIO()
            with wave.open(buffer, "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(rate)
                w.writeframes((np.clip(wav, -1, 1) * 32767).astype("<i2").tobytes())
            z.writestr(f"songs/{name}.wav", buffer.getvalue())
            z.writestr(f"songs/{name}.txt", f"my sound, {name}")
    return path
