"""Model cache, missing weights, > 30 s windowing (token parity with audiocraft), inputs over http."""

import http.server
import random
import threading
from functools import partial

import pytest
import torch

from musicgen_local.engine import load_engine, reference
from musicgen_local.engine.api import Failed, Progress, Request
from musicgen_local.engine.plan import plan_request
from musicgen_local.errors import UserError
from musicgen_local.settings import Settings
from tests.audio_helpers import events_of, generate, wav_bytes, write_tone


@pytest.fixture(scope="module")
def large(tiny_weights):
    from musicgen_local.engine.models import load_musicgen

    return load_musicgen(Settings(weights_dir=tiny_weights), "large", "cpu")


@pytest.mark.slow
def test_windowed_tokens_equal_audiocraft_past_30s(large):
    """31 s = a 30 s window then a re-prompted one (12 s prompt, stride 18 s), as audiocraft's own
    `MusicGen._generate_tokens` does it; progress counts every step of both windows."""
    request = Request(model_version="large", prompt="lofi", duration=31, top_k=50, seed=11)
    seen = []
    with torch.no_grad():
        reference.seed_everything(11)
        plan = plan_request(large, request, None, random.Random(11))
        ours = reference.generate_tokens(plan, request, lambda d, t: seen.append((d, t)))

        reference.seed_everything(11)
        large.set_generation_params(duration=31, top_k=50, top_p=0.0, temperature=1.0, cfg_coef=3, extend_stride=18)
        attributes, _ = large._prepare_tokens_and_attributes(["lofi"], None)
        theirs = large._generate_tokens(attributes, None, progress=False)

    assert ours.shape == theirs.shape == (1, 4, 31 * 50)
    assert torch.equal(ours, theirs)
    assert seen[-1][0] == seen[-1][1] == 1503 + (650 - 600 + 3)


@pytest.mark.slow
def test_windowed_generation_is_the_same_with_both_decoders(settings):
    """Past 30 s the fast decoder re-prompts its slot exactly as audiocraft's loop does."""
    request = Request(model_version="stereo-large", prompt="x", duration=31, top_k=50, seed=1)
    fast = load_engine(settings.with_(max_batch=1, warmup="none"))
    oracle = load_engine(settings.with_(decoder="reference", warmup="none"))
    try:
        events = events_of(fast, **request.as_dict())
        ours, theirs = events[-1].result, generate(oracle, **request.as_dict())
    finally:
        fast.close()
        oracle.close()
    wav, _ = wav_bytes(ours.audio)
    assert wav.shape == (2, 31 * 32000)
    assert ours.audio == theirs.audio
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[-1].done == progress[-1].total == 1503 + (650 - 600 + 3)


def test_models_load_once_and_lru_evicts(settings):
    engine = load_engine(settings.with_(max_models=1, warmup="none"))
    try:
        for version in ["large", "large", "stereo-large", "large"]:
            generate(engine, model_version=version, duration=1)
        device = engine.health()["devices"][0]
    finally:
        engine.close()
    assert device["model_loads"] == 3  # large, stereo-large (evicts large), large again
    assert device["resident_models"] == ["large"]


def test_missing_weights_fail_fast_naming_files_and_command(settings, tmp_path):
    engine = load_engine(settings.with_(weights_dir=tmp_path / "empty", warmup="none"))
    try:
        failed = events_of(engine, model_version="melody-large", duration=1)[-1]
    finally:
        engine.close()
    assert isinstance(failed, Failed) and failed.kind == "weights"
    assert "facebook/musicgen-melody-large/state_dict.bin" in failed.message
    assert "adefossez/HTDemucs/955717e8.safetensors" in failed.message
    assert "`musicgen-local weights fetch melody-large`" in failed.message


@pytest.fixture
def file_server(tmp_path):
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_input_audio_from_an_http_url(engine, tmp_path, file_server):
    write_tone(tmp_path / "melody.wav", 1.0, sr=44100, channels=2)
    result = generate(
        engine, model_version="melody-large", prompt="x", duration=1, input_audio=f"{file_server}/melody.wav"
    )
    assert result.num_samples == 32000
    with pytest.raises(UserError, match="Could not download `input_audio` from .*/missing.wav"):
        generate(engine, model_version="melody-large", input_audio=f"{file_server}/missing.wav")
