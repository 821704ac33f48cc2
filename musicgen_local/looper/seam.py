"""The seam: seamless by construction.

The engine generates past the loop's end. That overhang is what the music does right after the loop's
last sample, so it is folded over the loop's start: the loop opens with the overhang and crossfades
into its own first beat. Tiled, the loop's last sample is then followed by exactly the sample the
model generated after it (no discontinuity at all at the seam), and the crossfade happens across the
first beat, from one rendering of that beat to another, never across a cut.

The crossfade is equal-power (sin/cos), corrected for how alike the two signals are: equal power is
right for unrelated material and bumps correlated material by up to 3 dB mid-fade (a repeated drum
pattern is highly correlated with itself a bar later), so the gains are divided by
sqrt(1 + rho sin 2 theta), which is exactly equal gain at rho = 1 and plain equal power at rho = 0.
"""

from __future__ import annotations

import numpy as np


def fold(loop: np.ndarray, overhang: np.ndarray) -> np.ndarray:
    """`loop` ([T] or [C, T]) with `overhang` (the audio right after it, [F] or [C, F]) folded over its
    first F samples. Returns a new array; the seam of the result is continuous by construction."""
    loop = np.array(loop, dtype=np.float32)
    overhang = np.asarray(overhang, dtype=np.float32)
    length = overhang.shape[-1]
    if length == 0:
        return loop
    if length > loop.shape[-1]:
        raise ValueError(f"overhang of {length} samples is longer than the loop ({loop.shape[-1]})")
    head = loop[..., :length]
    theta = np.arange(length) / length * (np.pi / 2)  # 0 at the seam: the first sample is the overhang's
    rho = np.clip(_correlation(head, overhang), 0.0, 1.0)
    norm = 1.0 / np.sqrt(1.0 + rho * np.sin(2 * theta))
    loop[..., :length] = (head * np.sin(theta) + overhang * np.cos(theta)) * norm
    return loop


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    denominator = np.sqrt(np.dot(a, a) * np.dot(b, b))
    return float(np.dot(a, b) / denominator) if denominator > 0 else 0.0
