"""The models and figures the GPU check's sections share: random-weight LMs and MusicGens of a given size (nothing
downloaded), their windows, and the device's peak memory. Imported by gpu_check.py and each section module (one
way: no section imports gpu_check)."""

from __future__ import annotations

import gc

import torch

LARGE = (2048, 32, 48)  # dim, heads, layers: audiocraft model_scale/large.yaml
TINY = (32, 2, 2)


def reset_peak(device: str) -> None:
    """Each row's peak is its own: the caching allocator's free blocks go back and the counter restarts."""
    if device.startswith("cuda"):
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")


def lm_for(scale: tuple[int, int, int], device: str, stereo: bool = False):
    """An audiocraft LM of this size with random weights, built on the device, float16 on CUDA."""
    from audiocraft.models.builders import get_lm_model

    from musicgen_local.engine.fast.model import lay_out_for_cpu
    from musicgen_local.testing.tiny import lm_cfg

    dim, heads, layers = scale
    cfg = lm_cfg(stereo, False)
    cfg.device, cfg.dtype = device, "float16" if device.startswith("cuda") else "float32"
    cfg.transformer_lm.update(dim=dim, num_heads=heads, num_layers=layers, hidden_scale=4, activation="gelu")
    torch.manual_seed(0)
    with torch.device(device):
        lm = get_lm_model(cfg).eval()
    lay_out_for_cpu(lm)
    return lm


def conditions_for(lm, text: str = "lofi hip hop beat with warm piano chords") -> dict:
    from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout, ConditioningAttributes

    attrs = [ConditioningAttributes(text={"description": text})]
    provider = lm.condition_provider
    return provider(provider.tokenize(attrs + ClassifierFreeGuidanceDropout(p=1.0)(attrs)))


def windows_for(lm, n: int, frames: int, device: str, seed: int = 0) -> list:
    from musicgen_local.engine.fast import SamplingParams, Window

    return [
        Window(
            conditions_for(lm, f"request {i}"),
            None,
            frames,
            SamplingParams(),
            torch.Generator(device).manual_seed(seed + i),
        )
        for i in range(n)
    ]


def musicgen_for(scale, device: str):
    """A whole MusicGen: the LM above and EnCodec 32 kHz at its real size, random weights."""
    from audiocraft.models import MusicGen

    return MusicGen("large", encodec_for(device), lm_for(scale, device), max_duration=30)


def encodec_for(device: str):
    from audiocraft.models import builders

    from musicgen_local.testing.tiny import _encodec_cfg

    cfg = _encodec_cfg()
    cfg.seanet.update(dimension=128, n_filters=64, lstm=2)  # facebook/encodec_32khz's sizes
    torch.manual_seed(1)
    return builders.get_compression_model(cfg).to(device).eval()
