"""Engine-test fixtures shared across modules."""

from pathlib import Path

import pytest
import torch


def write_full_tune(settings, model: str, folder: Path, seed: int = 0) -> Path:
    """A full fine-tune of `model` (its tiny weights moved well away from the published ones), as a tar."""
    from musicgen_local import tuned
    from musicgen_local import weights as W

    snapshot = W.cached_path(settings.weights_dir, W.HubFile(W.lm_repo(model), "state_dict.bin")).parent
    package = torch.load(snapshot / "state_dict.bin", map_location="cpu", weights_only=False)
    g = torch.Generator().manual_seed(seed)
    package["best_state"] = {
        k: v + 0.5 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
        for k, v in package["best_state"].items()
    }
    path = folder / "state_dict.bin"
    torch.save(package, path)
    files = {"state_dict.bin": path, "compression_state_dict.bin": snapshot / "compression_state_dict.bin"}
    return tuned.write(folder / "full.tar", "full", model, files)


@pytest.fixture
def separations(monkeypatch):
    """Counts htdemucs runs (the conditioner imports apply_model from demucs.apply at call time)."""
    import demucs.apply

    calls, depth = [], []
    original = demucs.apply.apply_model

    def counted(*args, **kwargs):  # apply_model recurses (bag of models, shifts, splits): count the outer call
        if not depth:
            calls.append(tuple(args[1].shape))
        depth.append(1)
        try:
            return original(*args, **kwargs)
        finally:
            depth.pop()

    monkeypatch.setattr(demucs.apply, "apply_model", counted)
    return calls
