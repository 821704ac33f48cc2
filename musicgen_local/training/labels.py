"""What a dataset's pieces are labelled with (tempo and key, by librosa) and stripped of (vocals, by htdemucs).

Genre, mood and instrument labels, which the hosted fine-tuner adds with essentia's TensorFlow models, are not
offered: those model files cannot be shipped with this project.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np

SAMPLE_RATE = 32000


KEYS = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
# Krumhansl-Kessler key profiles: how strongly each pitch class belongs to a major or minor key.
MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def estimate_key(wav: np.ndarray) -> str:
    """The key whose profile correlates best with the piece's mean chroma, e.g. "A minor"."""
    import librosa

    chroma = librosa.feature.chroma_cqt(y=wav.mean(axis=0), sr=SAMPLE_RATE).mean(axis=1)
    best, name = -np.inf, "C major"
    for tonic in range(12):
        for profile, mode in ((MAJOR, "major"), (MINOR, "minor")):
            score = np.corrcoef(chroma, np.roll(profile, tonic))[0, 1]
            if score > best:
                best, name = score, f"{KEYS[tonic]} {mode}"
    return name


def estimate_bpm(wav: np.ndarray) -> float:
    import librosa

    tempo, _ = librosa.beat.beat_track(y=wav.mean(axis=0), sr=SAMPLE_RATE)
    return float(np.atleast_1d(tempo)[0])


def describe_music(wav: np.ndarray) -> str:
    """Tempo and key, as MusicGen's training descriptions put them ("120 bpm, A minor"); empty for silence."""
    if float(np.abs(wav).max(initial=0.0)) < 1e-4:
        return ""
    bpm = estimate_bpm(wav)
    return ", ".join(part for part in (f"{bpm:.0f} bpm" if bpm > 0 else "", estimate_key(wav)) if part)


# ------------------------------------------------------------------------------------------ vocals


def htdemucs_separator(channels: int) -> Callable[[np.ndarray], np.ndarray]:
    """htdemucs from the weights folder (the one melody models use), on the CPU: drums + bass + other."""
    import torch
    from demucs.apply import apply_model
    from demucs.audio import convert_audio
    from demucs.pretrained import get_model

    from ..stems import position_shifts_from

    model = get_model("htdemucs")
    model.eval()
    keep = [i for i, name in enumerate(model.sources) if name != "vocals"]

    def separate(wav: np.ndarray) -> np.ndarray:
        audio = convert_audio(torch.from_numpy(wav)[None], SAMPLE_RATE, model.samplerate, model.audio_channels)
        with torch.no_grad(), position_shifts_from(model, random.Random(0)):  # no draw from the process' random
            stems = apply_model(model, audio, shifts=0, split=True, overlap=0.25, progress=False)  # [1, S, C, T]
        kept = stems[0, keep].sum(dim=0)[None]
        back = convert_audio(kept, model.samplerate, SAMPLE_RATE, channels)[0]
        return back.numpy().astype("float32")

    return separate
