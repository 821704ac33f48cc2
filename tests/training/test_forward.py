"""The trainer's own forward computes audiocraft's loss: cross-entropy of `LMModel.compute_predictions`, with the
LoRA merged into the weights (`lora.applied`), for mono, stereo and melody structures."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from musicgen_local.engine.models import load_model
from musicgen_local.training import lora
from musicgen_local.training.forward import TrainingForward


def audiocraft_loss(logits: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """audiocraft's solver loss: the mean over codebooks of each one's cross-entropy on its valid positions."""
    per_codebook = []
    for k in range(codes.shape[1]):
        valid = mask[:, k]
        per_codebook.append(F.cross_entropy(logits[:, k][valid], codes[:, k][valid]))
    return torch.stack(per_codebook).mean()


def _conditions(lm, melody: bool):
    from audiocraft.modules.conditioners import ConditioningAttributes, WavCondition

    attributes = []
    for i, text in enumerate(("piano", "drums and bass")):
        attr = ConditioningAttributes(text={"description": text})
        if melody:
            wav = torch.randn(1, 1, 32000, generator=torch.Generator().manual_seed(i))
            attr.wav["self_wav"] = WavCondition(wav, torch.tensor([32000]), [32000], [None], [0.0])
        attributes.append(attr)
    return lm.condition_provider(lm.condition_provider.tokenize(attributes))


@pytest.mark.parametrize("model_version", ["large", "stereo-large", "melody-large"])
def test_the_loss_is_cross_entropy_of_audiocrafts_compute_predictions_with_the_adapter_merged(settings, model_version):
    lm = load_model(settings, model_version, "cpu").lm
    generator = torch.Generator().manual_seed(0)
    adapters = lora.attach(lm, 4, 8.0, generator)
    with torch.no_grad():
        for adapter in adapters.values():  # B is zero at first: give every target a real low-rank change
            adapter.lora_B.normal_(0.0, 0.2, generator=generator)
    codes = torch.randint(0, lm.card, (2, lm.num_codebooks, 37), generator=generator)
    conditions = _conditions(lm, melody=model_version.startswith("melody"))
    with torch.no_grad():
        ours = TrainingForward(lm, adapters).loss(codes, conditions)
        base = TrainingForward(lm).loss(codes, conditions)
        with lora.applied(lm, lora.tensors(adapters), 2.0):
            out = lm.compute_predictions(codes, [], conditions)
        theirs = audiocraft_loss(out.logits, codes, out.mask)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-5), (ours, theirs)
    assert abs(base - ours) > 1e-2  # the adapters change the loss: the comparison above sees them
