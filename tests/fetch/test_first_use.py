"""First use: the engine fetches what is missing when allowed, fails fast when not; fine-tuned checkpoints."""

from __future__ import annotations

import pytest

from musicgen_local import weights as W
from musicgen_local.engine import Hooks, Request, load_engine
from musicgen_local.errors import WeightsMissingError
from musicgen_local.fetch import fetch, files_for
from musicgen_local.settings import Settings

ONE_SECOND = 32000  # tiny codec: 50 frames/s, 640 samples/frame


def test_auto_fetch_on_first_use_then_generates(hub, weights_dir, tmp_path):
    engine = load_engine(Settings(weights_dir=weights_dir, device="cpu", auto_fetch=True))
    logs: list[str] = []
    request = Request(model_version="stereo-large", prompt="lofi beat", duration=1, seed=1)

    result = engine.generate(request, tmp_path / "out", Hooks(on_log=logs.append))

    assert (result.channels, result.sample_rate, result.num_samples) == (2, 32000, ONE_SECOND)
    assert result.path.stat().st_size > 0
    assert logs[:2] == ["Using seed 1", "Loading model stereo-large..."]
    assert logs[2] == ("Fetching 6 missing file(s) for `stereo-large`: facebook/musicgen-stereo-large/state_dict.bin, "
                       "facebook/musicgen-stereo-large/compression_state_dict.bin, t5-base/config.json, "
                       "t5-base/model.safetensors, t5-base/spiece.model, t5-base/tokenizer.json")
    # The stereo LM's codec is a pointer to facebook/encodec_32khz, discovered and fetched on the way.
    assert any(line.startswith("Downloading facebook/encodec_32khz/model.safetensors (") for line in logs)
    assert any("100%" in line for line in logs)  # progress bars went to the prediction's logs
    assert any(line.startswith("Fetched 8 file(s), ") for line in logs)
    seen = len(hub.seen)

    engine.generate(Request(model_version="stereo-large", prompt="jazz", duration=1, seed=2), tmp_path / "again")
    assert len(hub.seen) == seen  # everything is on disk now: no network at all


def test_without_auto_fetch_missing_weights_fail_fast(hub, weights_dir, tmp_path):
    engine = load_engine(Settings(weights_dir=weights_dir, device="cpu", auto_fetch=False))
    with pytest.raises(WeightsMissingError, match=r"musicgen-local weights fetch large"):
        engine.generate(Request(model_version="large", prompt="x", duration=1, seed=1), tmp_path / "out")
    assert hub.seen == []


def _finetune(tmp_path) -> dict[str, bytes]:
    """A tiny 'fine-tuned' large: same format, other weights (seed 7), published as me/musicgen-finetuned."""
    from musicgen_local.testing.tiny import write_lm

    src = tmp_path / "finetune-src"
    write_lm(src, "large", repo="me/musicgen-finetuned", seed=7)
    snapshot = next((W.hub_cache(src) / "models--me--musicgen-finetuned" / "snapshots").iterdir())
    return {path.name: path.read_bytes() for path in snapshot.iterdir()}


def _lm_matches(engine, state_dict_bytes: bytes, tmp_path) -> bool:
    import torch

    saved = tmp_path / "expected.bin"
    saved.write_bytes(state_dict_bytes)
    expected = torch.load(saved, map_location="cpu", weights_only=False)["best_state"]
    loaded = engine.models.get("large").lm.state_dict()
    return all(torch.equal(loaded[k].float(), v.float()) for k, v in expected.items())


def test_fine_tuned_checkpoint_from_a_hub_repo(hub, weights_dir, tmp_path):
    files = _finetune(tmp_path)
    for name, data in files.items():
        hub.add("me/musicgen-finetuned", name, data)
    settings = Settings(weights_dir=weights_dir, device="cpu", checkpoints={"large": "me/musicgen-finetuned"})

    fetch(weights_dir, files_for(["large"], checkpoints=settings.checkpoints))
    engine = load_engine(settings)
    result = engine.generate(Request(model_version="large", prompt="x", duration=1, seed=1), tmp_path / "out")

    assert (result.channels, result.num_samples) == (1, ONE_SECOND)
    assert not any(s.path.startswith("/facebook/musicgen-large/") for s in hub.seen)
    assert _lm_matches(engine, files["state_dict.bin"], tmp_path)


def test_fine_tuned_checkpoint_from_a_local_dir(tiny_weights, tmp_path):
    files = _finetune(tmp_path)
    checkpoint = tmp_path / "my-finetune"
    checkpoint.mkdir()
    for name, data in files.items():
        (checkpoint / name).write_bytes(data)
    engine = load_engine(Settings(weights_dir=tiny_weights, device="cpu", checkpoints={"large": str(checkpoint)}))

    result = engine.generate(Request(model_version="large", prompt="x", duration=1, seed=1), tmp_path / "out")

    assert (result.channels, result.num_samples) == (1, ONE_SECOND)
    assert _lm_matches(engine, files["state_dict.bin"], tmp_path)
