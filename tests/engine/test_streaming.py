"""Streamed segments join seamlessly: concatenated in order, they are the final waveform.

The final file is normalised and quantised to 16 bits, the segments are neither. With
`normalization_strategy="peak"` the final file is the waveform times one gain (0.89 / its peak),
rounded to 16 bits; the gain is estimated by least squares, and what is left must be that rounding
alone. Measured on the tiny checkpoints (CPU, 0.4 s segments, codec.LEFT_CONTEXT 50 and
RIGHT_CONTEXT 8 frames), text, melody, continuation, stereo, stereo melody and 31 s across windows:
largest difference 1.54e-5 of full scale (0.50 of a 16-bit step), RMS difference 1.00x the rounding
noise LSB/sqrt(12), SNR 82-96 dB (the rounding's own, lower for the quieter stereo codec). Without
left context the largest difference is 0.15 (mono) to 0.70 (stereo), SNR 10-44 dB; without right
context 0.46-0.66, SNR 10-40 dB. The tiny stereo codec (transformers' EnCodec, one LSTM layer) needs
about 20 frames on the left (10 give 33 steps of difference); the mono one (no LSTM) none.
"""

from __future__ import annotations

import numpy as np
import pytest

from musicgen_local.engine import codec
from musicgen_local.engine.api import Audio, Done, Progress, Request
from tests.audio_helpers import wav_bytes, write_tone

LSB = 1 / 32768  # one 16-bit step, as a fraction of full scale
# The bound: nothing but the final file's rounding to 16 bits, which is off by half a step at most and
# by LSB / sqrt(12) in RMS; we allow one step, and 10 % more RMS.
MAX_DIFF, MAX_RMS = LSB, 1.1 * LSB / 12**0.5
SEGMENT_S = 0.4  # 20 frames: several joins in a short clip, and not a divisor of the 30 s window


@pytest.fixture(scope="module")
def streaming_engine(settings):
    from musicgen_local.engine import load_engine

    engine = load_engine(settings.with_(stream_seconds=SEGMENT_S, warmup="none"))
    yield engine
    engine.close()


def stream(engine, **inputs) -> tuple[list[Audio], np.ndarray, list]:
    """(segments, final samples [C, T], every event in order) of one streamed request."""
    events = list(engine.submit(Request(normalization_strategy="peak", seed=7, **inputs), stream=True))
    assert isinstance(events[-1], Done), events[-1]
    return [e for e in events if isinstance(e, Audio)], wav_bytes(events[-1].result.audio)[0], events


def seam_error(segments: list[Audio], final: np.ndarray) -> tuple[float, float, float]:
    """(largest difference, RMS difference, SNR in dB) of the concatenated segments against the final
    file, once the final file's normalisation gain is taken out."""
    joined = np.concatenate([wav_bytes(s.wav)[0] for s in segments], axis=1)  # [C, T]
    assert joined.shape == final.shape
    gain = float((joined * final).sum() / (joined * joined).sum())
    error = final - gain * joined
    rms = float(np.sqrt((error**2).mean()))
    return float(np.abs(error).max()), rms, float(10 * np.log10((final**2).mean() / rms**2))


def assert_segments_in_order(segments: list[Audio], seconds: float, channels: int) -> None:
    assert [s.index for s in segments] == list(range(len(segments)))
    starts = np.cumsum([0] + [s.num_samples for s in segments[:-1]]) / 32000
    assert [s.start_s for s in segments] == pytest.approx(list(starts))
    assert sum(s.num_samples for s in segments) == seconds * 32000
    assert {s.channels for s in segments} == {channels}


CASES = {
    "text": dict(model_version="large", prompt="lofi beat", duration=3),
    "stereo": dict(model_version="stereo-large", prompt="lofi beat", duration=3),
    "melody": dict(model_version="melody-large", prompt="jazz", duration=3),
    "stereo-melody": dict(model_version="stereo-melody-large", prompt="jazz", duration=2),
    "continuation": dict(model_version="large", prompt="more", duration=3, continuation=True),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.slow
def test_segments_concatenate_to_the_final_waveform(streaming_engine, tmp_path, case):
    inputs = dict(CASES[case])
    if "melody" in case or case == "continuation":
        inputs["input_audio"] = str(write_tone(tmp_path / "tone.wav", 1.0))
    segments, final, events = stream(streaming_engine, **inputs)
    assert_segments_in_order(segments, inputs["duration"], final.shape[0])
    largest, rms, snr = seam_error(segments, final)
    assert largest <= MAX_DIFF and rms <= MAX_RMS, (largest, rms, snr)
    # incremental: the first segment comes while the tokens are still being decoded
    first = events.index(segments[0])
    assert any(isinstance(e, Progress) for e in events[first:])


def test_segments_join_across_30_s_windows(streaming_engine):
    segments, final, _ = stream(streaming_engine, model_version="large", prompt="long", duration=31)
    assert_segments_in_order(segments, 31, 1)
    largest, rms, snr = seam_error(segments, final)
    assert largest <= MAX_DIFF and rms <= MAX_RMS, (largest, rms, snr)


@pytest.mark.parametrize("left, right", [(0, codec.RIGHT_CONTEXT), (codec.LEFT_CONTEXT, 0)])
@pytest.mark.parametrize("model_version", ["large", "stereo-large"])
def test_the_bound_fails_without_the_codec_context(streaming_engine, monkeypatch, model_version, left, right):
    """The guard of the test above: segments cut without their context do not pass it."""
    monkeypatch.setattr(codec, "LEFT_CONTEXT", left)
    monkeypatch.setattr(codec, "RIGHT_CONTEXT", right)
    segments, final, _ = stream(streaming_engine, model_version=model_version, prompt="lofi beat", duration=2)
    largest, rms, snr = seam_error(segments, final)
    assert largest > 100 * MAX_DIFF and rms > 100 * MAX_RMS, (largest, rms, snr)
