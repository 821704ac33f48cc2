"""The exact-length rule and how much audio a loop needs generated."""

import pytest

from musicgen_local.looper.plan import plan_loop


@pytest.mark.parametrize(
    "bpm, max_duration, beats, samples",
    [
        (140, 8, 16, 219429),  # 16 x 60 / 140 x 32000 = 219428.57
        (117, 8, 8, 131282),  # 4 bars would be 8.2 s, over 8
        (120, 8, 16, 256000),
        (48, 20, 16, 640000),  # exactly max_duration
        (40, 2, 1, 48000),  # not even a bar fits: one beat
        (300, 20, 64, 409600),
    ],
)
def test_loop_is_a_power_of_two_beats_of_exact_length(bpm, max_duration, beats, samples):
    plan = plan_loop(bpm, max_duration)
    assert (plan.beats, plan.samples) == (beats, samples)


def test_every_valid_request_fits_its_max_duration_and_one_generation_window():
    for max_duration in range(2, 21):
        for bpm in [40 + 0.37 * i for i in range(703)] + list(range(40, 301)):
            plan = plan_loop(bpm, max_duration)
            assert plan.beats & (plan.beats - 1) == 0
            assert plan.samples <= max_duration * 32000
            assert plan_loop(bpm, max_duration).beats * 2 * 60 / bpm > max_duration  # the largest that fits
            assert plan.generate_seconds <= 30.0  # MusicGen's own window: no extended generation needed
