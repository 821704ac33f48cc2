"""The trainer's own forward computes audiocraft's loss: cross-entropy of `LMModel.compute_predictions`, with the
LoRA merged into the weights (`lora.applied`), for mono, stereo and melody structures."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from musicgen_local.engine.models import load_model
from musicgen_local.training import lora
from musicgen_local.training.forward import Dropout, TrainingForward


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


class _Merged(torch.nn.Module):
    """A differentiable merge, W -> W + scale * B @ A (autograd's reference for our backward)."""

    def __init__(self, adapter: lora.LowRank) -> None:
        super().__init__()
        self.adapter = adapter

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.adapter.scale * (self.adapter.lora_B @ self.adapter.lora_A)


def _adapted(lm):
    generator = torch.Generator().manual_seed(0)
    adapters = lora.attach(lm, 4, 8.0, generator)
    with torch.no_grad():
        for adapter in adapters.values():
            adapter.lora_B.normal_(0.0, 0.2, generator=generator)
    codes = torch.randint(0, lm.card, (2, lm.num_codebooks, 29), generator=generator)
    return adapters, codes


@pytest.mark.parametrize("model_version", ["large", "melody-large"])
def test_every_adapters_gradient_is_what_autograd_gives_through_audiocrafts_forward(settings, model_version):
    from torch.nn.utils import parametrize

    lm = load_model(settings, model_version, "cpu").lm
    adapters, codes = _adapted(lm)
    conditions = _conditions(lm, melody=model_version.startswith("melody"))
    TrainingForward(lm, adapters).loss(codes, conditions).backward()
    ours = {name: (a.lora_A.grad.clone(), a.lora_B.grad.clone()) for name, a in adapters.items()}
    for adapter in adapters.values():
        adapter.zero_grad(set_to_none=True)
    for name, adapter in adapters.items():
        module, attr = lm.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2]
        parametrize.register_parametrization(module, attr, _Merged(adapter), unsafe=True)
    out = lm.compute_predictions(codes, [], conditions)
    audiocraft_loss(out.logits, codes, out.mask).backward()
    for name, adapter in adapters.items():
        a, b = ours[name]
        assert torch.allclose(a, adapter.lora_A.grad, rtol=1e-4, atol=1e-6), name
        assert torch.allclose(b, adapter.lora_B.grad, rtol=1e-4, atol=1e-6), name
    assert all(b.abs().sum() > 0 for _, b in ours.values())  # every target got a gradient to compare


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_dropout_drops_a_fraction_p_keeps_the_mean_and_draws_only_from_its_generator(p):
    x = torch.ones(4, 500, 256)
    torch.manual_seed(0)
    outside = torch.get_rng_state()
    first = Dropout(torch.Generator().manual_seed(5))(x, p)
    again = Dropout(torch.Generator().manual_seed(5))(x, p)
    assert torch.equal(torch.get_rng_state(), outside) and torch.equal(first, again)
    assert abs((first == 0).float().mean().item() - p) < 0.005
    assert abs(first.mean().item() - 1.0) < 0.01
