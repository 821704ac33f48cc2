"""First use: the engine fetches what is missing when allowed, fails fast when not; fine-tuned checkpoints."""

from __future__ import annotations

import pytest

from musicgen_local import weights as W
from musicgen_local.engine import Request, load_engine, result_of
from musicgen_local.engine.api import Log
from musicgen_local.errors import WeightsMissingError
from musicgen_local.settings import Settings
from musicgen_local.weights import fetch, files_for

ONE_SECOND = 32000  # tiny codec: 50 frames/s, 640 samples/frame


@pytest.fixture
def engines():
    started = []

    def start(settings: Settings):
        started.append(load_engine(settings.with_(devices="cpu", warmup="none")))
        return started[-1]

    yield start
    for engine in started:
        engine.close()


def test_auto_fetch_on_first_use_then_generates(hub, weights_dir, engines):
    engine = engines(Settings(weights_dir=weights_dir, auto_fetch=True))
    request = Request(model_version="stereo-large", prompt="lofi beat", duration=1, seed=1)

    events = list(engine.submit(request))

    result = events[-1].result
    logs = [e.line for e in events if isinstance(e, Log)]
    assert (result.channels, result.sample_rate, result.num_samples) == (2, 32000, ONE_SECOND)
    assert len(result.audio) > 0
    fetching = (
        "Fetching 6 missing file(s) for `stereo-large`: facebook/musicgen-stereo-large/state_dict.bin, "
        "facebook/musicgen-stereo-large/compression_state_dict.bin, t5-base/config.json, "
        "t5-base/model.safetensors, t5-base/spiece.model, t5-base/tokenizer.json"
    )
    assert logs[:2] == ["Using seed 1", fetching]
    # The stereo LM's codec is a pointer to facebook/encodec_32khz, discovered and fetched on the way.
    assert any(line.startswith("Downloading facebook/encodec_32khz/model.safetensors (") for line in logs)
    assert any("100%" in line for line in logs)  # progress bars went to the prediction's logs
    assert any(line.startswith("Fetched 8 file(s), ") for line in logs)
    assert "Loading model stereo-large..." in logs
    seen = len(hub.seen)

    result_of(engine.submit(Request(model_version="stereo-large", prompt="jazz", duration=1, seed=2)))
    assert len(hub.seen) == seen  # everything is on disk now: no network at all


def test_without_auto_fetch_missing_weights_fail_fast(hub, weights_dir, engines):
    engine = engines(Settings(weights_dir=weights_dir, auto_fetch=False))
    with pytest.raises(WeightsMissingError, match=r"musicgen-local weights fetch large"):
        result_of(engine.submit(Request(model_version="large", prompt="x", duration=1, seed=1)))
    assert hub.seen == []


def _finetune(tmp_path) -> dict[str, bytes]:
    """A tiny 'fine-tuned' large: same format, other weights (seed 7), published as me/musicgen-finetuned."""
    from musicgen_local.testing.tiny import write_lm

    src = tmp_path / "finetune-src"
    write_lm(src, "large", repo="me/musicgen-finetuned", seed=7)
    snapshot = next((W.hub_cache(src) / "models--me--musicgen-finetuned" / "snapshots").iterdir())
    return {path.name: path.read_bytes() for path in snapshot.iterdir()}


def _audio(engine, seed: int = 1) -> bytes:
    return result_of(engine.submit(Request(model_version="large", prompt="x", duration=1, seed=seed))).audio


def test_fine_tuned_checkpoint_from_a_hub_repo(hub, weights_dir, tiny_weights, tmp_path, engines):
    files = _finetune(tmp_path)
    for name, data in files.items():
        hub.add("me/musicgen-finetuned", name, data)
    settings = Settings(weights_dir=weights_dir, checkpoints={"large": "me/musicgen-finetuned"})
    local = tmp_path / "my-finetune"
    local.mkdir()
    for name, data in files.items():
        (local / name).write_bytes(data)

    fetch(weights_dir, files_for(["large"], checkpoints=settings.checkpoints))
    from_hub = _audio(engines(settings))

    assert not any(s.path.startswith("/facebook/musicgen-large/") for s in hub.seen)
    # the same weights as read from a local folder, and not Meta's
    assert from_hub == _audio(engines(Settings(weights_dir=tiny_weights, checkpoints={"large": str(local)})))
    assert from_hub != _audio(engines(Settings(weights_dir=tiny_weights)))


def test_fine_tuned_checkpoint_from_a_local_dir(tiny_weights, tmp_path, engines):
    files = _finetune(tmp_path)
    checkpoint = tmp_path / "my-finetune"
    checkpoint.mkdir()
    for name, data in files.items():
        (checkpoint / name).write_bytes(data)
    engine = engines(Settings(weights_dir=tiny_weights, checkpoints={"large": str(checkpoint)}))

    result = result_of(engine.submit(Request(model_version="large", prompt="x", duration=1, seed=1)))

    assert (result.channels, result.num_samples) == (1, ONE_SECOND)
    assert result.audio != _audio(engines(Settings(weights_dir=tiny_weights)))  # not Meta's large
