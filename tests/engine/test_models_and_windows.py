"""Model cache, missing weights, > 30 s windowing (token parity with audiocraft), http inputs."""

import http.server
import threading
from functools import partial

import pytest
import torch

from musicgen_local.engine import Hooks, Request, load_engine
from musicgen_local.engine.fast import fast_generate
from musicgen_local.engine.generate import generate_tokens, reference_decoder, sampling_params, seed_everything
from musicgen_local.errors import UserError, WeightsMissingError
from tests.audio_helpers import read_wav, write_tone


@pytest.mark.parametrize("decoder", [reference_decoder, fast_generate], ids=["reference", "fast"])
def test_windowed_tokens_equal_audiocraft_past_30s(engine, decoder):
    """31 s = a 30 s window then a re-prompted one (12 s prompt, stride 18 s), as audiocraft does,
    through the engine's own windowing with either decoder."""
    model = engine.models.get("large")
    request = Request(model_version="large", prompt="lofi", duration=31, top_k=50)
    params = sampling_params(request)
    seen = []

    seed_everything(11)
    attributes, _ = model._prepare_tokens_and_attributes(["lofi"], None)
    ours = generate_tokens(model, attributes, None, 31, params, decoder,
                           Hooks(on_progress=lambda d, t: seen.append((d, t))))

    seed_everything(11)
    model.set_generation_params(duration=31, top_k=50, top_p=0.0, temperature=1.0, cfg_coef=3, extend_stride=18)
    attributes, _ = model._prepare_tokens_and_attributes(["lofi"], None)
    theirs = model._generate_tokens(attributes, None, progress=False)

    assert ours.shape == theirs.shape == (1, 4, 31 * 50)
    assert torch.equal(ours, theirs)
    assert seen[-1][0] == seen[-1][1] == 1503 + (650 - 600 + 3)  # every step of both windows counted


def test_windowed_generation_length(engine, tmp_path):
    result = engine.generate(Request(model_version="stereo-large", prompt="x", duration=31, top_k=50, seed=1),
                             tmp_path)
    wav, _ = read_wav(result.path)
    assert wav.shape == (2, 31 * 32000)


def test_models_load_once_and_lru_evicts(settings, tmp_path):
    engine = load_engine(settings.with_(max_models=1))
    for version in ["large", "large", "stereo-large", "large"]:
        engine.generate(Request(model_version=version, prompt="x", duration=1), tmp_path)
    assert engine.models.loads == 3  # large, stereo-large (evicts large), large again
    assert engine.models.resident() == ["large"]


def test_missing_weights_fail_fast_naming_files_and_command(settings, tmp_path):
    engine = load_engine(settings.with_(weights_dir=tmp_path / "empty"))
    with pytest.raises(WeightsMissingError) as exc:
        engine.generate(Request(model_version="melody-large", prompt="x", duration=1), tmp_path)
    message = str(exc.value)
    assert "facebook/musicgen-melody-large/state_dict.bin" in message
    assert "adefossez/HTDemucs/955717e8.safetensors" in message
    assert "`musicgen-local weights fetch melody-large`" in message


@pytest.fixture
def file_server(tmp_path):
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_input_audio_from_an_http_url(engine, tmp_path, file_server):
    write_tone(tmp_path / "melody.wav", 1.0, sr=44100, channels=2)
    result = engine.generate(Request(model_version="melody-large", prompt="x", duration=1,
                                     input_audio=f"{file_server}/melody.wav"), tmp_path / "out")
    assert result.num_samples == 32000
    with pytest.raises(UserError, match="Could not download `input_audio` from .*/missing.wav"):
        engine.generate(Request(model_version="melody-large", input_audio=f"{file_server}/missing.wav"), tmp_path)
