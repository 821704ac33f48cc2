"""Cog's setup(weights): a fine-tuned LM from COG_WEIGHTS (a directory or a tarball URL) serves its model_version."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from musicgen_local import weights as W
from musicgen_local.cog_weights import settings_for_cog_weights
from musicgen_local.settings import Settings


def _write_finetune(tmp_path, model_version: str):
    from musicgen_local.testing.tiny import write_lm

    write_lm(tmp_path / "src", model_version, repo="me/finetuned", seed=7)
    return next((W.hub_cache(tmp_path / "src") / "models--me--finetuned" / "snapshots").iterdir())


def test_a_directory_with_the_lm_pair_serves_the_matching_model_version(tmp_path, tiny_weights):
    settings = Settings(weights_dir=tiny_weights, checkpoints={"large": "me/other"})
    pair = _write_finetune(tmp_path, "stereo-melody-large")

    updated = settings_for_cog_weights(settings, pair)

    assert updated.checkpoints == {"large": "me/other", "stereo-melody-large": str(pair)}


def test_a_tarball_url_is_downloaded_and_unpacked(hub, tmp_path, tiny_weights):
    pair = _write_finetune(tmp_path, "large")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in pair.iterdir():
            tar.add(path, arcname=f"trained/{path.name}")
    hub.add("me/training-output", "weights.tar", buffer.getvalue())
    url = f"{hub.cdn_url}/cdn/{hub.repos['me/training-output']['weights.tar'].sha256}"

    updated = settings_for_cog_weights(Settings(weights_dir=tiny_weights), url)

    unpacked = updated.checkpoints["large"]
    assert list(updated.checkpoints) == ["large"]
    assert unpacked.endswith("/trained")
    assert (Path(unpacked) / "state_dict.bin").read_bytes() == (pair / "state_dict.bin").read_bytes()


def test_our_own_weights_dir_or_none_changes_nothing(tiny_weights):
    settings = Settings(weights_dir=tiny_weights)
    assert settings_for_cog_weights(settings, None) is settings
    assert settings_for_cog_weights(settings, tiny_weights) is settings


def test_predictor_setup_takes_cog_weights(tmp_path, tiny_weights, monkeypatch):
    import importlib.util

    from cog.predictor import extract_setup_weights, has_setup_weights

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("predict", root / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pair = _write_finetune(tmp_path, "large")
    monkeypatch.setenv("MUSICGEN_WEIGHTS", str(tiny_weights))
    monkeypatch.setenv("COG_WEIGHTS", str(pair))
    predictor = module.Predictor()

    assert has_setup_weights(predictor)  # what coglet checks before passing COG_WEIGHTS
    predictor.setup(weights=extract_setup_weights(predictor))

    assert predictor.engine.settings.checkpoints == {"large": str(pair)}
