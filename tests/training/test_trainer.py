"""The trainer on the tiny real-format models: it learns (an overfit proof: greedy decoding of the trained
description gives back the clip's tokens), with LoRA and as a full fine-tune; it resumes from its checkpoint
exactly; what it saves is a fine-tune the rest of the project reads."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch

from musicgen_local import tuned
from musicgen_local.engine.models import load_model
from musicgen_local.training import lora
from musicgen_local.training.dataset import Piece
from musicgen_local.training.params import parse_training_input
from musicgen_local.training.trainer import Trainer

DESCRIPTION = "my sound"
SECONDS = 2.0


def _model(settings, model_version: str = "large"):
    """A tiny MusicGen whose codec gives varied tokens. The tiny random encoder's biases dwarf its
    signal and its codebooks are far apart, so every clip encodes to 1 or 2 tokens per codebook: an
    "overfit" to such a clip proves nothing. Without the biases, and with codebooks 100x closer, a
    clip's 100 frames hold ~90 distinct tokens per codebook."""
    model = load_model(settings, model_version, "cpu")
    codec = model.compression_model
    with torch.no_grad():
        for name, param in codec.encoder.named_parameters():
            if name.endswith("bias"):
                param.zero_()
        for layer in codec.quantizer.vq.layers:
            layer._codebook.embed.mul_(0.01)
    return model


def _clip(path, channels: int = 1, seed: int = 0):
    rate = 32000
    t = np.arange(int(SECONDS * rate)) / rate
    noise = np.random.default_rng(seed).standard_normal(t.size)
    wav = 0.3 * np.sin(2 * np.pi * (220 + 30 * seed) * t * (1 + t)) + 0.1 * noise
    soundfile.write(str(path), np.stack([wav] * channels, axis=1).astype("float32"), rate)
    return path


def _params(**changes):
    base = {
        "dataset_path": "unused",
        "model_version": "large",
        "epochs": 1,
        "updates_per_epoch": 150,
        "batch_size": 2,
        "lr": 1e-2,
        "lr_scheduler": "constant",
        "warmup": 0,
        "cfg_p": 0.0,
        "lora_rank": 8,
        "seed": 1,
        "drop_vocals": False,
        "auto_labeling": False,
    }
    return parse_training_input({**base, **changes})


def _clip_tokens(model, clip) -> torch.Tensor:
    wav, _ = soundfile.read(str(clip), dtype="float32", always_2d=True)
    with torch.no_grad():
        return model.compression_model.encode(torch.from_numpy(wav.T.copy())[None])[0][0]


def _greedy_match(model, clip) -> float:
    """The fraction of the clip's tokens that greedy decoding of its description gives back."""
    model.set_generation_params(use_sampling=False, duration=SECONDS, cfg_coef=1.0)
    with torch.no_grad():
        generated = model.generate([DESCRIPTION], progress=False, return_tokens=True)[1][0]
    target = _clip_tokens(model, clip)
    frames = min(generated.shape[-1], target.shape[-1])
    return (generated[:, :frames] == target[:, :frames]).float().mean().item()


def _train(trainer) -> list:
    with torch.inference_mode():  # as the device loop drives it
        return [p for p in trainer.work() if p is not None]


@pytest.mark.parametrize("lora_rank", [8, 0], ids=["lora", "full"])
@pytest.mark.slow
def test_overfit_one_clip_then_greedy_decoding_gives_it_back(settings, tmp_path, lora_rank):
    model = _model(settings)
    clip = _clip(tmp_path / "clip.wav")
    tokens = _clip_tokens(model, clip)
    assert min(len(set(tokens[k].tolist())) for k in range(tokens.shape[0])) > 50  # not a degenerate clip
    before = _greedy_match(model, clip)
    trainer = Trainer(model, [Piece(clip, DESCRIPTION)], _params(lora_rank=lora_rank), tmp_path / "s")
    progress = _train(trainer)
    if lora_rank:  # the LM is left as it was: decode with the saved adapter applied, as serving does
        found = tuned.read(trainer.save(tmp_path / "w.tar"))
        with lora.applied(model.lm, found.adapters(), found.scale):
            after = _greedy_match(model, clip)
    else:  # a full fine-tune trains the LM's own weights
        after = _greedy_match(model, clip)
    assert before < 0.05  # chance, before training
    assert after > 0.9, (before, after)  # measured: 0.985 for both
    assert progress[-1].loss < progress[0].loss / 10 and progress[-1].step == progress[-1].total == 150


def test_a_new_trainer_resumes_from_the_checkpoint_exactly(settings, tmp_path):
    params = _params(updates_per_epoch=10, cfg_p=0.3, lr_scheduler="cosine", warmup=2)
    pieces = [Piece(_clip(tmp_path / f"clip{i}.wav", seed=i), DESCRIPTION) for i in range(3)]  # one held out
    whole = Trainer(_model(settings), pieces, params, tmp_path / "whole", checkpoint_every=5)
    _train(whole)

    first = Trainer(_model(settings), pieces, params, tmp_path / "resumed", checkpoint_every=5)
    with torch.inference_mode():
        for progress in first.work():
            if progress is not None and progress.step == 7:  # killed after the checkpoint at 5
                break
    logs = []
    second = Trainer(_model(settings), pieces, params, tmp_path / "resumed", checkpoint_every=5, log=logs.append)
    resumed = _train(second)
    assert resumed[0].step == 6 and "Resuming from the checkpoint at step 5/10." in logs
    a, b = tuned.read(whole.save(tmp_path / "whole.tar")), tuned.read(second.save(tmp_path / "resumed.tar"))
    assert a.adapters().keys() == b.adapters().keys()
    for name, (wa, wb) in a.adapters().items():
        assert torch.equal(wa, b.adapters()[name][0]), name
        assert torch.equal(wb, b.adapters()[name][1]), name
    for metric in ("heldout_loss_base", "heldout_loss", "train_loss", "loss"):
        assert a.training[metric] == b.training[metric], metric


def test_a_resumed_training_holds_out_what_its_random_seed_held_out(settings, tmp_path):
    params = _params(updates_per_epoch=2, seed=-1)  # a seed drawn at random, kept in the checkpoint
    pieces = [Piece(_clip(tmp_path / f"clip{i}.wav", seed=i), DESCRIPTION) for i in range(20)]
    first = Trainer(_model(settings), pieces, params, tmp_path / "s", checkpoint_every=1, micro_batch=1)
    with torch.inference_mode():
        next(p for p in first.work() if p is not None)  # killed after the checkpoint at 1
    second = Trainer(_model(settings), pieces, params, tmp_path / "s", checkpoint_every=1, micro_batch=1)
    _train(second)
    assert second.seed == first.seed and second.heldout == first.heldout and len(first.heldout) == 2


def test_saved_fine_tunes_are_read_back(settings, tmp_path):
    clip = _clip(tmp_path / "clip.wav", channels=2)
    model = load_model(settings, "stereo-melody-large", "cpu")
    params = _params(model_version="stereo-melody-large", updates_per_epoch=2, cfg_p=0.5)
    shapes = {name: tuple(p.shape) for name, p in model.lm.named_parameters()}
    trainer = Trainer(model, [Piece(clip, DESCRIPTION)], params, tmp_path / "s")
    _train(trainer)
    found = tuned.read(trainer.save(tmp_path / "w.tar"))
    assert (found.kind, found.base, found.rank, found.scale) == ("lora", "stereo-melody-large", 8, 2.0)
    assert any(name.startswith("linears.") for name in found.targets)
    for name, (a, b) in found.adapters().items():
        assert (b.shape[0], a.shape[1]) == shapes[name] and a.shape[0] == b.shape[1] == 8
    assert found.training["steps"] == 2 and found.training["input"]["model_version"] == "stereo-melody-large"
