"""The engine on tiny real-format checkpoints, CPU: what a user gets back."""

import hashlib

import numpy as np
import pytest

from musicgen_local.engine.api import Canceled, Done, Log, Progress, Started
from musicgen_local.errors import UserError
from tests.audio_helpers import events_of, generate, wav_bytes, wav_header, write_tone

LM_VERSIONS = ["stereo-melody-large", "stereo-large", "melody-large", "large"]


@pytest.mark.parametrize("model_version", LM_VERSIONS)
@pytest.mark.parametrize("duration", [1, 2, 3])
def test_text_to_music_shape(engine, tmp_path, model_version, duration):
    result = generate(engine, model_version=model_version, duration=duration, seed=1)
    channels = 2 if model_version.startswith("stereo") else 1
    path = tmp_path / result.filename
    path.write_bytes(result.audio)
    assert wav_header(path) == {"format": 1, "channels": channels, "sample_rate": 32000, "bits": 16}
    wav, sr = wav_bytes(result.audio)
    assert (sr, wav.shape) == (32000, (channels, duration * 32000))
    assert (result.sample_rate, result.channels, result.num_samples) == (32000, channels, duration * 32000)
    assert result.filename == "out.wav"


def test_mp3_output(engine, tmp_path):
    result = generate(engine, model_version="stereo-large", duration=1, output_format="mp3", seed=1)
    data = result.audio
    assert result.filename == "out.mp3"
    assert data[:3] == b"ID3" or (data[0] == 0xFF and data[1] & 0xE0 == 0xE0)
    from audiocraft.data.audio import audio_read

    path = tmp_path / "out.mp3"
    path.write_bytes(data)
    wav, sr = audio_read(path)
    assert sr == 32000 and wav.shape[0] == 2
    assert abs(wav.shape[-1] - 32000) < 2500  # mp3 frames pad the ends


def _sha(result):
    return hashlib.sha256(result.audio).hexdigest()


@pytest.mark.parametrize("model_version", ["large", "stereo-large"])
def test_same_seed_same_audio_other_seed_other_audio(engine, model_version):
    a = generate(engine, model_version=model_version, duration=1, seed=42)
    b = generate(engine, model_version=model_version, duration=1, seed=42)
    c = generate(engine, model_version=model_version, duration=1, seed=43)
    assert a.seed == b.seed == 42
    assert _sha(a) == _sha(b)
    assert _sha(a) != _sha(c)


@pytest.mark.parametrize("seed", [None, -1, 0])
def test_random_seed_is_reported_and_reproducible(engine, seed):
    events = events_of(engine, model_version="large", duration=1, seed=seed)
    first = events[-1].result
    assert first.seed not in (None, -1, 0)
    assert Log(f"Using seed {first.seed}") in events
    again = generate(engine, model_version="large", duration=1, seed=first.seed)
    assert _sha(first) == _sha(again)


@pytest.mark.parametrize("strategy", ["peak", "clip", "rms", "loudness"])
def test_normalization_strategies(engine, strategy):
    result = generate(engine, model_version="large", duration=2, seed=7, normalization_strategy=strategy)
    wav, _ = wav_bytes(result.audio)
    peak, rms_db = np.abs(wav).max(), 20 * np.log10(np.sqrt((wav.mean(0) ** 2).mean()))
    if strategy == "peak":
        assert peak == pytest.approx(10 ** (-1 / 20), abs=2e-3)  # -1 dBFS
    elif strategy == "clip":
        assert peak <= 10 ** (-1 / 20) + 1e-4
    elif strategy == "rms":
        assert rms_db == pytest.approx(-18, abs=1.0) or peak >= 0.999  # -18 dB unless clipped
    else:
        import torch
        import torchaudio

        lufs = torchaudio.functional.loudness(torch.from_numpy(wav), 32000).item()
        assert lufs == pytest.approx(-14, abs=1.0) or peak >= 0.999


def test_continuation_includes_the_prompt_and_lasts_duration(engine, tmp_path):
    prompt = write_tone(tmp_path / "prompt.wav", 3.0, channels=2)
    result = generate(
        engine,
        model_version="stereo-large",
        duration=3,
        continuation=True,
        input_audio=str(prompt),
        continuation_start=0,
        continuation_end=1,
        seed=3,
        normalization_strategy="peak",
    )
    out, _ = wav_bytes(result.audio)
    assert out.shape == (2, 3 * 32000)
    # The head is the prompt's own EnCodec round trip (stereo-large uses facebook/encodec_32khz).
    decoded = generate(
        engine,
        model_version="encode-decode",
        input_audio=str(prompt),
        continuation_end=1,
        normalization_strategy="peak",
    )
    ref, _ = wav_bytes(decoded.audio)
    head = slice(0, 28000)  # stay clear of the boundary the decoder's receptive field blurs
    same = np.corrcoef(out[0, head], ref[0, head])[0, 1]
    noise = np.corrcoef(np.random.default_rng(0).standard_normal(28000), ref[0, head])[0, 1]
    assert same > 0.9 > abs(noise) + 0.5


def test_continuation_prompt_must_be_shorter_than_duration(engine, tmp_path):
    prompt = write_tone(tmp_path / "prompt.wav", 3.0)
    with pytest.raises(
        UserError,
        match=r"continuation prompt \(3.0 s after cropping\) must be shorter than "
        r"`duration` \(2 s\)",
    ):
        generate(engine, model_version="large", duration=2, continuation=True, input_audio=str(prompt))


def test_crop_past_the_end_is_empty(engine, tmp_path):
    prompt = write_tone(tmp_path / "prompt.wav", 1.0)
    with pytest.raises(
        UserError,
        match=r"empty after cropping to continuation_start=2, continuation_end=None "
        r"\(the clip is 1.00 s long\)",
    ):
        generate(engine, model_version="large", continuation=True, input_audio=str(prompt), continuation_start=2)


def test_undecodable_audio_is_a_clear_error_without_the_servers_paths(engine, tmp_path):
    junk = tmp_path / "song.mp3"
    junk.write_bytes(b"this is not audio at all" * 100)
    with pytest.raises(UserError, match=r"^Could not decode `input_audio`") as exc:
        generate(engine, model_version="melody-large", input_audio=str(junk))
    assert str(tmp_path) not in str(exc.value) and "song.mp3" not in str(exc.value)


def test_missing_input_file(engine):
    with pytest.raises(UserError, match="`input_audio` file not found: /nope.wav"):
        generate(engine, model_version="melody-large", input_audio="/nope.wav")


@pytest.mark.parametrize("channels", [1, 2])
def test_encode_decode_keeps_channels_and_length(engine, tmp_path, channels):
    clip = write_tone(tmp_path / "in.wav", 2.0, sr=44100, channels=channels)
    result = generate(
        engine,
        model_version="encode-decode",
        prompt=None,
        input_audio=str(clip),
        continuation_start=0,
        continuation_end=1,
        duration=99999,
    )
    wav, sr = wav_bytes(result.audio)
    assert (sr, wav.shape) == (32000, (channels, 32000))


def test_loudness_on_a_clip_shorter_than_400ms(engine, tmp_path):
    clip = write_tone(tmp_path / "short.wav", 0.25)
    result = generate(engine, model_version="encode-decode", input_audio=str(clip))
    wav, _ = wav_bytes(result.audio)
    assert wav.shape == (1, 8000) and np.abs(wav).max() > 0


def test_input_audio_as_data_uri(engine, tmp_path):
    import base64

    clip = write_tone(tmp_path / "in.wav", 0.5)
    uri = "data:audio/wav;base64," + base64.b64encode(clip.read_bytes()).decode()
    assert generate(engine, model_version="encode-decode", input_audio=uri).num_samples == 16000


def test_events_come_in_order_and_progress_counts_every_step(engine):
    events = events_of(engine, model_version="large", duration=1, seed=4)
    kinds = [type(e) for e in events]
    assert kinds[0] is Log and kinds.count(Started) == 1 and kinds[-1] is Done
    assert kinds.index(Started) < kinds.index(Progress)
    progress = [(e.done, e.total) for e in events if isinstance(e, Progress)]
    assert progress[-1] == (53, 53)  # 50 frames + 3 delay steps, as audiocraft's own callback counts
    assert [d for d, _ in progress] == sorted({d for d, _ in progress})  # increasing, never repeated


def test_cancel_stops_between_steps_and_the_engine_goes_on(engine):
    from musicgen_local.engine import Request

    run = engine.submit(Request(model_version="large", prompt="x", duration=20))
    seen = []
    for event in run:
        seen.append(event)
        if isinstance(event, Progress) and event.done >= 5:
            run.cancel()
    assert isinstance(seen[-1], Canceled)
    assert max(e.done for e in seen if isinstance(e, Progress)) < 20 * 50  # it did not decode to the end
    assert generate(engine, model_version="large", duration=1).num_samples == 32000  # still serving
