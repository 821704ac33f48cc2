"""A training owns its randomness: what else draws from the process' generators while it runs (a prediction on
another thread) neither changes the fine-tune nor gets the training's numbers; and what it holds out never
trains (its audio does not change the fine-tune) but is scored before and after."""

from __future__ import annotations

import random

import numpy as np
import soundfile
import torch

from musicgen_local import tuned
from musicgen_local.engine.models import load_model
from musicgen_local.training.dataset import Piece
from musicgen_local.training.trainer import Trainer, heldout_pieces
from tests.training.test_trainer import _params, _train

DESCRIPTION = "my warm sound"


def _clip(path, seed: int, channels: int = 1, seconds: float = 1.0):
    t = np.arange(int(seconds * 32000)) / 32000
    noise = np.random.default_rng(seed).standard_normal(t.size)
    wav = 0.3 * np.sin(2 * np.pi * (200 + 40 * seed) * t) + 0.1 * noise
    soundfile.write(str(path), np.stack([wav] * channels, axis=1).astype("float32"), 32000)
    return path


def _pieces(folder, count: int, channels: int = 1, seeds=None) -> list[Piece]:
    folder.mkdir(parents=True, exist_ok=True)
    seeds = seeds or list(range(count))
    return [Piece(_clip(folder / f"{i}.wav", seeds[i], channels), DESCRIPTION) for i in range(count)]


def _adapters(trainer, path) -> dict:
    return tuned.read(trainer.save(path)).adapters()


def test_draws_from_the_process_generators_during_a_training_neither_change_it_nor_get_its_numbers(settings, tmp_path):
    """Condition and word dropout, the residual dropout, htdemucs' shift (a melody model): all the training's own."""
    pieces = _pieces(tmp_path / "pieces", 3, channels=2)
    params = _params(model_version="stereo-melody-large", updates_per_epoch=3, cfg_p=0.5, lr=1e-2)

    def trained(scratch, draw_alongside: bool):
        model = load_model(settings, "stereo-melody-large", "cpu")
        draws = []
        if draw_alongside:  # what another thread's prediction might draw while a step runs
            model.lm.condition_provider.register_forward_hook(
                lambda *_: draws.append((torch.rand(1).item(), random.random()))
            )
        trainer = Trainer(model, pieces, params, tmp_path / scratch)
        torch.manual_seed(1234)
        random.seed(1234)
        _train(trainer)
        after = (torch.rand(1).item(), random.random())
        return _adapters(trainer, tmp_path / f"{scratch}.tar"), draws, after

    quiet, _, _ = trained("quiet", draw_alongside=False)
    busy, draws, after = trained("busy", draw_alongside=True)
    torch.manual_seed(1234)
    random.seed(1234)
    alone = [(torch.rand(1).item(), random.random()) for _ in range(len(draws) + 1)]
    assert len(draws) >= 3 and draws + [after] == alone  # the process' own streams, untouched by the training
    assert quiet.keys() == busy.keys()
    for name, (a, b) in quiet.items():
        assert torch.equal(a, busy[name][0]) and torch.equal(b, busy[name][1]), name


def test_the_held_out_pieces_never_train_and_are_scored_before_and_after(settings, tmp_path):
    params = _params(updates_per_epoch=4, lr=3e-2)
    (held,) = heldout_pieces(4, params.seed)  # a tenth of 4 pieces, at least one
    results = []
    for variant in (0, 1):  # the held-out piece's audio differs between the two trainings, nothing else
        seeds = [0, 1, 2, 3]
        seeds[held] = 10 + variant
        logs = []
        model = load_model(settings, "large", "cpu")
        trainer = Trainer(
            model, _pieces(tmp_path / f"p{variant}", 4, seeds=seeds), params, tmp_path / f"s{variant}", log=logs.append
        )
        _train(trainer)
        found = tuned.read(trainer.save(tmp_path / f"w{variant}.tar"))
        results.append((found.adapters(), found.training, logs))
    (first, info, logs), (second, other_info, _) = results
    for name, (a, b) in first.items():  # what is held out never reaches the fine-tune
        assert torch.equal(a, second[name][0]) and torch.equal(b, second[name][1]), name
    assert info["heldout_loss_base"] != other_info["heldout_loss_base"]  # ...but it is what is scored
    assert info["heldout_pieces"] == 1 and info["pieces"] == 4
    assert info["heldout_loss"] < info["heldout_loss_base"]  # four updates at a high rate on similar clips
    assert 0 < info["train_loss"] < info["first_loss"] + 1
    assert any(line.startswith("Held out 1 of 4 pieces (they never train)") for line in logs)
    summary = next(line for line in logs if "held-out loss" in line)
    assert f"held-out loss {info['heldout_loss_base']:.4f} -> {info['heldout_loss']:.4f}" in summary


def test_a_training_of_one_piece_says_it_holds_none_out(settings, tmp_path):
    logs = []
    trainer = Trainer(
        load_model(settings, "large", "cpu"),
        _pieces(tmp_path / "p", 1),
        _params(updates_per_epoch=1),
        tmp_path / "s",
        log=logs.append,
    )
    _train(trainer)
    info = tuned.read(trainer.save(tmp_path / "w.tar")).training
    assert "One piece: none is held out, so the training reports no held-out loss." in logs
    assert "heldout_loss" not in info and "heldout_loss_base" not in info and info["heldout_pieces"] == 0
