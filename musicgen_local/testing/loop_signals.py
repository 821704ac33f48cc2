"""Synthetic music with a known beat, for the looper's tests and benchmark (tiny random weights make
noise, not music, and nothing may be downloaded).

Each maker returns a `Signal`: mono float32 audio at 32 kHz and the true beat and downbeat times.
`original_loop` is andreasjansson/musicgen-looper's own seam (a plain cut at two downbeats with a
100-sample linear blend into the lead-in, reference notes section 4.9), re-implemented here only as
the baseline the tests and bench compare against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SR = 32000
BEATS_PER_BAR = 4


@dataclass(frozen=True)
class Signal:
    name: str
    audio: np.ndarray  # [T] float32
    beats: np.ndarray  # beat times, seconds
    bpm: float  # the tempo it was made at (its mean tempo when it drifts)

    @property
    def downbeats(self) -> np.ndarray:
        return self.beats[::BEATS_PER_BAR]


def _beat_times(bpm: float, seconds: float, first: float, drift: float = 0.0) -> np.ndarray:
    """Beat times from `first` on; with `drift`, the tempo glides linearly from bpm*(1-drift/2) to bpm*(1+drift/2)."""
    times, t = [], first
    while t < seconds - 0.05:
        times.append(t)
        local = bpm * (1 + drift * (t / seconds - 0.5))
        t += 60.0 / local
    return np.asarray(times)


def _place(n: int, times: np.ndarray, sound) -> np.ndarray:
    """Add `sound(i)` (an array) at each time in `times`."""
    out = np.zeros(n)
    for i, t in enumerate(times):
        start = int(round(t * SR))
        s = sound(i)[: max(0, n - start)]
        out[start : start + len(s)] += s
    return out


def _decay(seconds: float, tau: float) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(int(seconds * SR)) / SR
    return t, np.exp(-t / tau)


def click_track(bpm: float = 117.0, seconds: float = 12.0, first: float = 0.41) -> Signal:
    """A metronome: a loud high click on each downbeat, softer lower clicks on the other beats."""
    t, env = _decay(0.03, 0.006)

    def click(i: int) -> np.ndarray:
        down = i % BEATS_PER_BAR == 0
        return (0.9 if down else 0.45) * np.sin(2 * np.pi * (1500 if down else 1000) * t) * env

    beats = _beat_times(bpm, seconds, first)
    return Signal("click track", _place(int(seconds * SR), beats, click).astype(np.float32), beats, bpm)


def drum_loop(bpm: float = 124.0, seconds: float = 12.0, first: float = 0.23, seed: int = 0) -> Signal:
    """Kick on 1 and the and-of-2, snare on 2 and 4, closed hats on eighths, and a sustained bass line
    (one note per bar, so the audio never goes silent and a plain cut is a real discontinuity)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    beats = _beat_times(bpm, seconds, first)
    period = 60.0 / bpm
    t, kick_env = _decay(0.35, 0.11)
    kick = np.sin(2 * np.pi * np.cumsum(48 + 90 * np.exp(-t / 0.025)) / SR) * kick_env
    snare_t, snare_env = _decay(0.2, 0.045)
    snare = (0.6 * rng.standard_normal(len(snare_env)) + 0.5 * np.sin(2 * np.pi * 190 * snare_t)) * snare_env
    _, hat_env = _decay(0.05, 0.008)
    hat_noise = np.diff(rng.standard_normal(len(hat_env) + 1))  # differenced noise: a bright, hat-like hiss
    hat = 0.12 * hat_noise * hat_env
    kicks = np.concatenate([beats[0::4], beats[1::4] + period / 2])
    audio = _place(n, kicks, lambda i: 0.8 * kick)
    audio += _place(n, np.concatenate([beats[1::4], beats[3::4]]), lambda i: 0.5 * snare)
    eighths = np.sort(np.concatenate([beats, beats + period / 2]))
    audio += _place(n, eighths, lambda i: hat * (1.0 if i % 2 == 0 else 0.6))
    audio += _bass_line(n, beats[::4], (55.0, 65.41, 49.0, 73.42))
    return Signal("drum loop", (0.8 * audio).astype(np.float32), beats, bpm)


def _bass_line(n: int, bar_starts: np.ndarray, notes: tuple[float, ...]) -> np.ndarray:
    """A continuous sine bass whose pitch steps at each bar start (phase-continuous, so only a cut breaks it)."""
    freq = np.full(n, notes[0])
    for i, start in enumerate(bar_starts):
        freq[int(round(start * SR)) :] = notes[i % len(notes)]
    return 0.25 * np.sin(2 * np.pi * np.cumsum(freq) / SR)


def drifting_tone(bpm: float = 96.0, seconds: float = 14.0, first: float = 0.37, drift: float = 0.02) -> Signal:
    """A sustained tone whose pitch glides up a minor third over the whole signal and whose tempo drifts
    by `drift` (2 %; `bpm` is its mean), swelling smoothly on each beat under a soft click: never
    silent, and the loop's end and start differ in pitch and phase, the hardest case for a seam."""
    n = int(seconds * SR)
    beats = _beat_times(bpm, seconds, first, drift)
    time = np.arange(n) / SR
    phase = 2 * np.pi * np.cumsum(220.0 * 2 ** (0.25 * time / seconds)) / SR
    tone = np.sin(phase) + 0.3 * np.sin(2 * phase)
    swell_t = np.arange(int(0.6 * SR)) / SR
    rise = 0.5 - 0.5 * np.cos(np.pi * np.minimum(swell_t / 0.03, 1.0))  # a 30 ms raised-cosine rise: no click
    envelope = 0.5 + _place(n, beats, lambda i: 0.5 * rise * np.exp(-swell_t / 0.25))
    t, env = _decay(0.02, 0.004)
    clicks = _place(n, beats, lambda i: (0.08 if i % BEATS_PER_BAR == 0 else 0.04) * np.sin(2 * np.pi * 2000 * t) * env)
    mean_bpm = (len(beats) - 1) * 60.0 / (beats[-1] - beats[0])
    return Signal("drifting tone", (0.3 * tone * envelope + clicks).astype(np.float32), beats, mean_bpm)


SIGNALS = {"click": click_track, "drums": drum_loop, "drift": drifting_tone}


# ---------------------------------------------------------------------------------------------- the baseline

ORIGINAL_BLEND = 100  # samples (3.1 ms at 32 kHz): musicgen-looper's "quick blend with the lead-in"


def original_loop(audio: np.ndarray, start: int, end: int, blend: int = ORIGINAL_BLEND) -> np.ndarray:
    """musicgen-looper's seam: audio[start:end], its last `blend` samples faded linearly into the
    `blend` samples before `start` (so that the loop's end leads into its start). blend=0: a plain cut."""
    loop = np.array(audio[start:end], dtype=np.float64)
    if blend:
        fade_in = np.linspace(0.0, 1.0, blend)
        loop[-blend:] = loop[-blend:] * (1 - fade_in) + audio[start - blend : start] * fade_in
    return loop.astype(np.float32)


def original_stretch(loop: np.ndarray, rate: float) -> np.ndarray:
    """musicgen-looper's stretch: the loop alone through `rubberband --tempo rate` with the CLI's default
    (R2) engine, as pyrubberband 0.3 runs it, its length whatever Rubber Band returns."""
    import subprocess
    import tempfile
    from pathlib import Path

    import soundfile

    with tempfile.TemporaryDirectory(prefix="original-stretch-") as tmp:
        src, dst = Path(tmp, "in.wav"), Path(tmp, "out.wav")
        soundfile.write(src, loop, SR, subtype="FLOAT")
        # f"{float(...)}", not repr(): numpy 2 writes np.float64(1.02), which the CLI reads as no ratio at all.
        cmd = ["rubberband", "-q", "--tempo", f"{float(rate):.12g}", str(src), str(dst)]
        subprocess.run(cmd, check=True, capture_output=True)
        out, _ = soundfile.read(dst, dtype="float32")
    return out
