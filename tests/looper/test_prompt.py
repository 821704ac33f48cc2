"""A tempo the prompt states is reconciled with the requested one, never contradicted."""

import pytest

from musicgen_local.looper.prompt import with_tempo


@pytest.mark.parametrize(
    "prompt, sent",
    [
        ("lofi hip hop beat", "lofi hip hop beat, 120 bpm"),
        ("", "120 bpm"),
        ("lofi beat at 90 BPM, warm", "lofi beat at 120 bpm, warm"),
        ("techno 128bpm", "techno 120 bpm"),
        ("house, bpm: 124, deep", "house, 120 bpm, deep"),
        ("dnb 170-175 bpm", "dnb 120 bpm"),
        ("slow jazz, tempo 60", "slow jazz, 120 bpm"),
        ("rock at 96 beats per minute", "rock at 120 bpm"),
        ("trap in the 1990s style", "trap in the 1990s style, 120 bpm"),
        ("funk with 120 BPM groove", "funk with 120 BPM groove"),
    ],
)
def test_the_prompt_names_one_tempo_the_requested_one(prompt, sent):
    assert with_tempo(prompt, 120).text == sent


def test_a_rewritten_tempo_is_logged():
    reconciled = with_tempo("lofi beat at 90 BPM", 120)
    assert reconciled.stated == (90.0,)
    assert "90" in reconciled.note(120) and "120" in reconciled.note(120)
    assert with_tempo("lofi beat", 120).note(120) is None


def test_fractional_tempos_print_plainly():
    assert with_tempo("x", 60.23).text == "x, 60.23 bpm"
    assert with_tempo("x", 140.0).text == "x, 140 bpm"  # the original sent "140.0 bpm"
