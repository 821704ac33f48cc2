"""How good a loop is, measured on the file alone: its seam and its tempo (used by tests and bench/looper.py).

`seam_click_db` is the seam figure: the energy of the linear-prediction residual (order 32, fitted on
the file tiled twice) from 5 ms before to 10 ms after the seam, in dB over the same window at the
loudest of the loop's other beats. A discontinuity in the waveform or its slope is exactly what a
linear predictor cannot predict, and a cut sits on a downbeat whose attack is itself unpredictable,
so a seam is judged against the loop's own beats, not against silence: a seam that adds nothing
scores 0 dB or below (its own downbeat is one of the loudest beats). The original's 3.1 ms blend lies
wholly inside the window; 10 ms after covers the attack a cut just precedes.

Why the loudest other beat and not the matching downbeat: after Rubber Band, the residual of the same
attack varies from beat to beat by up to ~5 dB (a quiet click under a loud tone is sometimes kept as a
transient, sometimes smeared), so one reference beat would make the figure noisy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LPC_ORDER = 32
CLICK_BEFORE, CLICK_AFTER = 160, 320  # samples at 32 kHz: 5 ms before, 10 ms after (the attack a cut precedes)
SPECTRUM_WINDOW = 2048  # 64 ms at 32 kHz
SPECTRUM_FLOOR_DB = 60.0


def lpc_residual(x: np.ndarray, order: int = LPC_ORDER) -> np.ndarray:
    """What an order-`order` linear predictor fitted on all of `x` (autocorrelation method) fails to predict."""
    import scipy.linalg
    import scipy.signal

    x = np.asarray(x, dtype=np.float64)
    spectrum = np.fft.rfft(x, 2 * len(x))
    autocorrelation = np.fft.irfft(np.abs(spectrum) ** 2)[: order + 1]
    autocorrelation[0] *= 1 + 1e-9  # a whisker of white noise keeps the system well-conditioned on silence
    if autocorrelation[0] == 0:
        return x
    coefficients = scipy.linalg.solve_toeplitz(autocorrelation[:order], autocorrelation[1 : order + 1])
    return x - scipy.signal.lfilter(np.concatenate([[0.0], coefficients]), [1.0], x)


def _tiled(loop: np.ndarray) -> np.ndarray:
    loop = np.asarray(loop, dtype=np.float64)
    loop = loop.mean(axis=0) if loop.ndim == 2 else loop
    return np.concatenate([loop, loop])


def seam_click_db(loop: np.ndarray, interior: Sequence[int]) -> float:
    """`interior`: sample positions in `loop` of its other beats (`interior_marks`)."""
    tiled = _tiled(loop)
    seam = len(tiled) // 2
    energy = lpc_residual(tiled) ** 2

    def around(k: int) -> float:
        return float(energy[k - CLICK_BEFORE : k + CLICK_AFTER].sum())

    if not interior:
        raise ValueError("a one-beat loop has no other beat to compare its seam with")
    reference = max(around(seam + k) for k in interior)
    return 10 * np.log10((around(seam) + 1e-20) / (reference + 1e-20))


def interior_marks(length: int, beats: int) -> list[int]:
    """Where a loop of `length` samples and `beats` beats has its other beats, assuming an even grid."""
    return [round(i * length / beats) for i in range(1, beats)]


def tempo(loop: np.ndarray, sr: int, bpm: float, tiles: int = 4) -> float:
    """The tempo a beat tracker finds in the loop played `tiles` times."""
    from .beats import track

    return track(np.tile(np.asarray(loop), tiles), sr, bpm).bpm
