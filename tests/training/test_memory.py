"""The training's memory estimate counts what a training holds: its trained parameters exactly (the adapters the
trainer makes, or every LM weight), for mono, stereo and melody structures. (Its activation term is checked
against measured memory by bench/training_memory.py.)"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from musicgen_local.engine.models import load_model
from musicgen_local.training import lora
from musicgen_local.training.memory import adapter_params, sizes_from_checkpoint, sizes_of, training_bytes


@pytest.mark.parametrize("model_version", ["large", "stereo-large", "melody-large"])
def test_the_estimate_counts_the_trained_parameters_exactly(settings, model_version):
    lm = load_model(settings, model_version, "cpu").lm
    sizes = sizes_of(lm)
    melody = model_version.startswith("melody")
    assert (sizes.cross, sizes.prefix > 0) == (not melody, melody)  # text cross-attended; chroma prepended
    lm_params = sum(p.numel() for n, p in lm.named_parameters() if not n.startswith("condition_provider."))
    adapters = lora.attach(lm, 8, 16.0, torch.Generator().manual_seed(0))
    assert adapter_params(sizes, 8) == sum(p.numel() for p in lora.parameters(adapters))
    lora_run = training_bytes(sizes, SimpleNamespace(lora_rank=8, batch_size=16), cuda=True)
    full_run = training_bytes(sizes, SimpleNamespace(lora_rank=0, batch_size=16), cuda=True)
    assert lora_run.weights == 2 * lm_params and lora_run.trained == 16 * adapter_params(sizes, 8)
    assert full_run.weights == 6 * lm_params and full_run.trained == 12 * lm_params
    shorter = training_bytes(sizes, SimpleNamespace(lora_rank=8, batch_size=16), cuda=True, frames=750)
    assert shorter.activations < lora_run.activations and shorter.total < lora_run.total


@pytest.mark.parametrize("model_version", ["large", "stereo-large", "melody-large"])
def test_a_checkpoint_gives_the_sizes_of_the_model_it_builds(settings, model_version):
    """The engine's loader holds the checkpoint before the model is built: the estimate needs nothing more."""
    (path,) = settings.weights_dir.glob(f"hub/models--facebook--musicgen-{model_version}/snapshots/*/state_dict.bin")
    package = torch.load(path, map_location="cpu", weights_only=True)
    assert sizes_from_checkpoint(package) == sizes_of(load_model(settings, model_version, "cpu").lm)
