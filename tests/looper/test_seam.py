"""The fold: the seam is the generated audio itself, and the crossfade keeps the level."""

import numpy as np

from musicgen_local.looper.seam import fold


def test_the_seam_is_the_sample_generated_after_the_loop():
    rng = np.random.default_rng(0)
    audio = rng.standard_normal(10_000).astype(np.float32)
    start, end, overhang = 1_000, 7_000, 800
    loop = fold(audio[start:end], audio[end : end + overhang])
    tiled = np.concatenate([loop, loop])
    seam = len(loop)
    # Across the seam the tiled loop plays exactly what was generated across the loop's end.
    assert np.array_equal(tiled[seam - 5 : seam + 1], audio[end - 5 : end + 1])
    # After the fold the loop is untouched, and nothing jumps where the fold ends.
    assert np.array_equal(loop[overhang:], audio[start + overhang : end])
    assert abs(loop[overhang - 1] - audio[start + overhang - 1]) < 0.01


def test_equal_power_for_unrelated_audio_and_equal_gain_for_the_same_audio():
    rng = np.random.default_rng(1)
    n = 32_000
    a, b = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    folded = fold(np.concatenate([a, a]), b)[:n]
    windows = folded.reshape(16, -1)
    rms = np.sqrt((windows**2).mean(axis=1))
    assert np.all(np.abs(20 * np.log10(rms)) < 0.5)  # no dip mid-fade, as a linear fade of unrelated audio has
    same = fold(np.concatenate([a, a]), a)[:n]
    assert np.allclose(same, a, atol=1e-5)  # identical material crossfades into itself unchanged
