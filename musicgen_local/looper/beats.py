"""Beat tracking on generated audio: beats, the downbeat, and the tempo they make.

librosa's dynamic-programming beat tracker (Ellis 2007; librosa is ISC, pure DSP, no model files)
finds the beats; madmom's and BeatNet's trained models are CC BY-NC-SA, which a commercial user may
not accept, and beat-this downloads its weights at run time. librosa finds no downbeats, so the
downbeat is ours: of the four beat phases, the one whose beats are most accented, in onset energy
overall and in the bass and in harmonic change (`_accents`).

Onset frames are 4 ms apart (hop 128 at 32 kHz), and an onset-strength peak trails a sharp attack
by 6-8 ms (measured on clicks and kicks; about 1 ms on a 30 ms swell), so beat times are moved back
by a quarter window (8 ms): a loop cut at a beat starts at, or just before, its attack, never inside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .plan import BEATS_PER_BAR

HOP = 128
N_FFT = 1024
CHROMA_FFT = 4096  # 8 Hz bins: enough to tell bass notes apart
CHROMA_HOP = 4 * HOP  # harmony changes per beat, not per 4 ms: a quarter of the frames is plenty
ONSET_LAG_SAMPLES = N_FFT // 4
BASS_MELS = 12  # of librosa's 128 mel bands at 32 kHz: up to about 240 Hz


@dataclass(frozen=True)
class Beats:
    times: np.ndarray  # seconds, at each beat's attack
    accent: np.ndarray  # how strongly each beat looks like a bar's first (see `_accents`)
    downbeat: int  # index in `times` of the first downbeat (0 .. BEATS_PER_BAR - 1)

    def __len__(self) -> int:
        return len(self.times)

    @property
    def bpm(self) -> float:
        """The tempo of a straight line through the beat times (0 when fewer than 2 beats)."""
        if len(self.times) < 2:
            return 0.0
        period = np.polyfit(np.arange(len(self.times)), self.times, 1)[0]
        return 60.0 / period if period > 0 else 0.0

    def downbeats(self) -> np.ndarray:
        """Indices of every downbeat."""
        return np.arange(self.downbeat, len(self.times), BEATS_PER_BAR)


def mono(audio: np.ndarray) -> np.ndarray:
    """[T] or [C, T] -> [T] float32."""
    audio = np.asarray(audio, dtype=np.float32)
    return audio.mean(axis=0) if audio.ndim == 2 else audio


def track(audio: np.ndarray, sr: int, bpm: float) -> Beats:
    """Beats of `audio` ([T] or [C, T]); the tracker's tempo prior is centred on the requested `bpm`
    (librosa's prior is an octave wide: it settles octave errors, not the tempo itself)."""
    import librosa

    y = mono(audio)
    bass, full = librosa.onset.onset_strength_multi(
        y=y, sr=sr, n_fft=N_FFT, hop_length=HOP, channels=[slice(0, BASS_MELS), slice(0, None)]
    )
    if not np.any(full > 0):
        return Beats(np.zeros(0), np.zeros(0), 0)
    _, frames = librosa.beat.beat_track(onset_envelope=full, sr=sr, hop_length=HOP, start_bpm=bpm, units="frames")
    frames = np.asarray(frames, dtype=int)
    times = np.maximum(frames * HOP - ONSET_LAG_SAMPLES, 0) / sr
    accent = _accents(y, sr, frames, full, bass)
    return Beats(times, accent, _downbeat_phase(accent))


def _accents(y: np.ndarray, sr: int, frames: np.ndarray, full: np.ndarray, bass: np.ndarray) -> np.ndarray:
    """Three marks of a bar's first beat, each relative to its own mean so that none dominates by scale:
    onset strength (accents), onset strength in the bass (kicks, bass notes) and harmonic change (chords
    and bass lines change at bar starts, where the loudest hit is often the snare on 2 and 4)."""
    import librosa

    if len(frames) == 0:
        return np.zeros(0)
    chroma = librosa.feature.chroma_stft(y=y, sr=sr, n_fft=CHROMA_FFT, hop_length=CHROMA_HOP)
    # Columns: the span before beat 0, then beat 0's, beat 1's ...
    per_beat = librosa.util.sync(chroma, frames * HOP // CHROMA_HOP, aggregate=np.median)
    per_beat /= np.linalg.norm(per_beat, axis=0, keepdims=True) + 1e-9
    change = 1.0 - np.sum(per_beat[:, 1:] * per_beat[:, :-1], axis=0)  # entering each beat's span
    cues = [_peak_near(full, frames), _peak_near(bass, frames), change[: len(frames)]]
    return sum(c / (c.mean() + 1e-9) for c in cues)


def _peak_near(envelope: np.ndarray, frames: np.ndarray, reach: int = 2) -> np.ndarray:
    """The envelope's largest value within `reach` frames of each beat (a beat frame can sit a frame off its peak)."""
    padded = np.pad(envelope, reach)
    return np.stack([padded[frames + reach + d] for d in range(-reach, reach + 1)]).max(axis=0)


def _downbeat_phase(accent: np.ndarray) -> int:
    if len(accent) < BEATS_PER_BAR:
        return 0
    scores = [accent[p::BEATS_PER_BAR].mean() for p in range(BEATS_PER_BAR)]
    return int(np.argmax(scores))


def at_octave(beats: Beats, bpm: float) -> Beats:
    """Fold an octave error: a tracker that found half-time beats gets the beats between them, one that
    found double-time beats keeps every other one (the more accented half)."""
    found = beats.bpm
    if len(beats) < 2 or found <= 0:
        return beats
    ratio = bpm / found
    if abs(np.log2(ratio) - 1) < abs(np.log2(ratio)):  # nearer double the found tempo
        mids = (beats.times[:-1] + beats.times[1:]) / 2
        times = np.empty(2 * len(beats.times) - 1)
        times[0::2], times[1::2] = beats.times, mids
        accent = np.empty_like(times)
        accent[0::2], accent[1::2] = beats.accent, 0.0
        return Beats(times, accent, _downbeat_phase(accent))
    if abs(np.log2(ratio) + 1) < abs(np.log2(ratio)):  # nearer half
        half = int(beats.accent[1::2].mean() > beats.accent[0::2].mean())
        times, accent = beats.times[half::2], beats.accent[half::2]
        return Beats(times, accent, _downbeat_phase(accent))
    return beats
