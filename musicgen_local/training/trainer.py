"""Fine-tuning a MusicGen on audiocraft's model code, one unit of work at a time.

Not audiocraft's solver or its dora launcher: those want a cluster's config tree, a dataset manifest
and a process of their own. What they compute is this, written against the model's own modules:
- every piece is encoded once by the model's own EnCodec, and its tokens kept (in `scratch`);
- an update is teacher-forced cross-entropy over the codebooks with the model's delay pattern
  (`LMModel.compute_predictions` gives the logits and the mask of valid positions), averaged over
  the codebooks as audiocraft's solver does;
- condition dropout: with probability `cfg_p` a piece's description (and melody) is dropped, so the
  model keeps an unconditional mode and classifier-free guidance keeps working;
- the text encoder is frozen (audiocraft keeps T5 out of the LM's parameters); a melody model
  conditions on the chroma of the piece's own audio, as audiocraft trains them (training.conditions);
- the forward is our own over the model's weights (training.forward), with LoRA's low-rank path on every
  target; every random draw (pieces, crops, condition and word dropout, htdemucs' shift, the residual
  dropout) comes from generators the training owns and its checkpoint holds, never the process' own;
- a held-out tenth of the pieces (at least one when there are several; chosen from the seed) never
  trains: its loss under the base model and under the fine-tune says whether the training learned;
- AdamW, a warmup then cosine / linear / constant decay, gradient accumulation over micro-batches to
  reach `batch_size`, mixed precision on CUDA;
- LoRA (training.lora) by default, a full fine-tune of the LM with `lora_rank` 0.

`work()` yields after each unit (one piece encoded, one held-out piece scored, or one micro-batch's forward
and backward), so that the device loop can decode between units. A checkpoint is written every few updates; a new
Trainer on the same `scratch` resumes from it.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import tuned
from . import lora
from .conditions import Conditioner, read_wav
from .dataset import Piece
from .forward import Dropout, TrainingForward

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
CODES = "codes.pt"
SAMPLE_RATE = 32000
HELDOUT_FRACTION = 0.1


@dataclass(frozen=True)
class Progress:
    step: int  # optimizer updates done
    total: int
    epoch: int
    epochs: int
    loss: float  # this update's, averaged over its micro-batches
    lr: float
    elapsed_s: float
    eta_s: float | None


def schedule(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    """The learning rate's factor at each update: linear warmup, then the decay asked for."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress

    return factor


class Trainer:
    def __init__(
        self,
        model,
        pieces: list[Piece],
        params,
        scratch: Path,
        log: Callable[[str], None] = log.info,
        *,
        micro_batch: int = 4,
        checkpoint_every: int | None = None,
        compression_package: dict | None = None,
    ) -> None:
        """`compression_package`: the base checkpoint's compression_state_dict.bin, copied into a full
        fine-tune's tar (a LoRA's tar needs none)."""
        if not pieces:
            raise ValueError("no pieces to train on")
        self.model, self.lm, self.pieces, self.params = model, model.lm, pieces, params
        self.scratch = Path(scratch)
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.say = log
        self.compression_package = compression_package
        self.device = next(self.lm.parameters()).device
        self.total = params.epochs * params.updates_per_epoch
        self.micro = max(1, min(micro_batch, params.batch_size))
        self.accumulate = math.ceil(params.batch_size / self.micro)
        self.checkpoint_every = checkpoint_every or max(1, min(params.updates_per_epoch, self.total // 10 or 1))
        self.seed = params.seed if params.seed not in (None, -1) else random.SystemRandom().randrange(1, 2**31)
        self.rng = random.Random(self.seed)  # pieces, crops, condition and word dropout
        self._hold_out()
        self.full = params.lora_rank == 0
        self.alpha = float(params.lora_alpha if params.lora_alpha is not None else 2 * params.lora_rank)
        self.conditioner = Conditioner(model, self.device)
        self.autocast_dtype = self._autocast_dtype()
        with torch.inference_mode(False):
            self._prepare_parameters()
        self.step = 0
        self.codes: list[torch.Tensor | None] = [None] * len(pieces)
        self.losses: list[float] = []
        self.heldout_losses: dict[str, float] = {}  # "base" and "tuned": the held-out pieces' mean loss

    # ------------------------------------------------------------------------------------ setup

    def _autocast_dtype(self) -> torch.dtype | None:
        if self.device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def _prepare_parameters(self) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        self.dropout = Dropout(torch.Generator(self.device).manual_seed(self.seed))
        if self.full:
            self.lm.float()  # float32 master weights; the forward runs in autocast on CUDA
            trainable = [p for p in self.lm.parameters()]
            for p in trainable:
                p.requires_grad_(True)
            self.adapters = {}
        else:
            self.adapters = lora.attach(self.lm, self.params.lora_rank, self.alpha, generator)
            trainable = lora.parameters(self.adapters)
        self.forward = TrainingForward(self.lm, self.adapters)
        self.trainable = trainable
        self.optimizer = torch.optim.AdamW(trainable, lr=self.params.lr, weight_decay=0.0)
        factor = schedule(self.params.lr_scheduler, self.params.warmup, self.total)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        fp16 = self.autocast_dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16) if self.device.type == "cuda" else None

    # ------------------------------------------------------------------------------------ the work

    def work(self) -> Iterator[Progress | None]:
        with torch.inference_mode(False):  # the optimizer's state is updated in place: never inference tensors
            self._resume()
        self.lm.eval()  # audiocraft's modules draw nothing in evaluation mode; our forward does the dropout
        yield from self._encode_all()
        if self.step == 0:  # a resumed training has its base's held-out loss in the checkpoint
            yield from self._score_heldout("base")
        start, start_step = time.monotonic(), self.step
        while self.step < self.total:
            losses = []
            for _ in range(self.accumulate):
                with torch.inference_mode(False), torch.enable_grad():
                    losses.append(self._micro_step())
                yield None
            with torch.inference_mode(False):
                self._update()
            self.step += 1
            self.losses.append(sum(losses) / len(losses))
            if self.step % self.checkpoint_every == 0 or self.step == self.total:
                self._checkpoint()
            elapsed = time.monotonic() - start
            yield Progress(
                self.step,
                self.total,
                1 + (self.step - 1) // self.params.updates_per_epoch,
                self.params.epochs,
                self.losses[-1],
                self.scheduler.get_last_lr()[0],
                elapsed,
                elapsed / (self.step - start_step) * (self.total - self.step),
            )
        yield from self._score_heldout("tuned")
        self._say_what_it_learned()

    def _encode_all(self) -> Iterator[None]:
        cached = self.scratch / CODES
        if cached.is_file():
            self.codes = torch.load(cached, map_location=self.device, weights_only=True)
        else:
            for i, piece in enumerate(self.pieces):
                with torch.no_grad():
                    codes, _ = self.model.compression_model.encode(read_wav(piece.wav, self.device)[None])
                self.codes[i] = codes[0]  # [K, T]
                yield None
            frames = sum(c.shape[-1] for c in self.codes)
            self.say(f"Encoded {len(self.pieces)} pieces: {frames} frames of {self.codes[0].shape[0]} codebooks.")
            torch.save(self.codes, cached)
        if self.conditioner.melody:
            for i, piece in enumerate(self.pieces):
                self.conditioner.separate(i, piece.wav, self.seed)
                yield None

    def _batch(self) -> tuple[torch.Tensor, list[tuple[int, str, int, int]]]:
        """A micro-batch of training pieces drawn at random, cropped at random to the shortest of them: codes
        [B, K, T] and (piece, description, start, frames) per row."""
        chosen = [self.training_pieces[self.rng.randrange(len(self.training_pieces))] for _ in range(self.micro)]
        length = min(self.codes[i].shape[-1] for i in chosen)
        length = min(length, int(self.model.max_duration * self.model.frame_rate))
        codes, items = [], []
        for i in chosen:
            start = self.rng.randrange(self.codes[i].shape[-1] - length + 1)
            codes.append(self.codes[i][:, start : start + length])
            items.append((i, self.pieces[i].description, start, length))
        return torch.stack(codes), items

    def _autocast(self):
        dtype = self.autocast_dtype or torch.float32
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.autocast_dtype is not None)

    def _micro_step(self) -> float:
        codes, items = self._batch()
        with self._autocast():
            conditions = self.conditioner.tensors(items, self.rng, self.params.cfg_p)
            loss = self.forward.loss(codes, conditions, self.dropout)
        scaled = loss / self.accumulate
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return float(loss.detach())

    def _update(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    # ------------------------------------------------------------------------------------ held out

    def _hold_out(self) -> None:
        self.heldout = heldout_pieces(len(self.pieces), self.seed)
        self.training_pieces = [i for i in range(len(self.pieces)) if i not in self.heldout]

    def _score_heldout(self, which: str) -> Iterator[None]:
        """The held-out pieces' mean loss, each piece whole, with its description (no dropout of any kind): with
        the base model ("base", before the first update) or the fine-tune ("tuned")."""
        if not self.heldout:
            if which == "base":
                self.say("One piece: none is held out, so the training reports no held-out loss.")
            return
        losses = []
        for i in self.heldout:
            codes = self.codes[i][:, : int(self.model.max_duration * self.model.frame_rate)]
            with torch.no_grad(), self._autocast():
                conditions = self.conditioner.tensors([(i, self.pieces[i].description, 0, codes.shape[-1])], None, 0)
                losses.append(float(self.forward.loss(codes[None], conditions)))
            yield None
        self.heldout_losses[which] = sum(losses) / len(losses)
        if which == "base":
            self.say(
                f"Held out {len(self.heldout)} of {len(self.pieces)} pieces (they never train): "
                f"loss {self.heldout_losses['base']:.4f} with the base model."
            )

    def _say_what_it_learned(self) -> None:
        train = self.train_loss()
        line = f"Training loss {self.losses[0]:.4f} -> {train:.4f} (the last epoch's mean)" if self.losses else ""
        if "tuned" in self.heldout_losses:
            base, tuned_loss = self.heldout_losses["base"], self.heldout_losses["tuned"]
            line += f"; held-out loss {base:.4f} -> {tuned_loss:.4f} (base model -> fine-tune)"
        if line:
            self.say(line + ".")

    def train_loss(self) -> float:
        """The mean loss of the last epoch's updates (less noisy than the last update's)."""
        last = self.losses[-self.params.updates_per_epoch :]
        return sum(last) / len(last) if last else float("nan")

    # ------------------------------------------------------------------------------------ checkpoints

    def _state(self) -> dict[str, Any]:
        weights = (
            lora.tensors(self.adapters)
            if not self.full
            else {k: v.detach().cpu() for k, v in self.lm.state_dict().items()}
        )
        return {
            "step": self.step,
            "weights": weights,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": self.rng.getstate(),
            "dropout_rng": self.dropout.generator.get_state(),
            "losses": self.losses,
            "heldout_losses": self.heldout_losses,
            "seed": self.seed,
        }

    def _checkpoint(self) -> None:
        path = self.scratch / CHECKPOINT
        partial = path.with_name(path.name + ".partial")
        torch.save(self._state(), partial)
        partial.replace(path)  # a crash while writing leaves the previous checkpoint whole

    def _resume(self) -> None:
        path = self.scratch / CHECKPOINT
        if not path.is_file():
            return
        state = torch.load(path, map_location="cpu", weights_only=False)
        with torch.no_grad():
            if self.full:
                self.lm.load_state_dict(state["weights"])
            else:
                lora.load(self.adapters, state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rng.setstate(state["rng"])
        if "dropout_rng" in state:  # checkpoints written before the trainer owned its dropout have none
            self.dropout.generator.set_state(state["dropout_rng"])
        self.heldout_losses = state.get("heldout_losses", {})
        self.step, self.losses, self.seed = state["step"], state["losses"], state["seed"]
        self._hold_out()  # a seed drawn at random is the checkpoint's, not this trainer's own draw
        self.say(f"Resuming from the checkpoint at step {self.step}/{self.total}.")

    # ------------------------------------------------------------------------------------ the result

    def save(self, dest: Path) -> Path:
        """The fine-tune as a `tuned` tar at `dest`; its `training` info holds the metrics the API shows."""
        info = {
            "steps": self.step,
            "loss": self.losses[-1] if self.losses else float("nan"),
            "first_loss": self.losses[0] if self.losses else float("nan"),
            "train_loss": self.train_loss(),
            "seed": self.seed,
            "pieces": len(self.pieces),
            "heldout_pieces": len(self.heldout),
            "input": _plain(self.params.model_dump()),
        }
        if "base" in self.heldout_losses:
            info["heldout_loss_base"] = self.heldout_losses["base"]
        if "tuned" in self.heldout_losses:
            info["heldout_loss"] = self.heldout_losses["tuned"]
        base = self.params.model_version
        if not self.full:
            return tuned.write_lora(dest, base, lora.tensors(self.adapters), alpha=self.alpha, training=info)
        import io

        from omegaconf import OmegaConf

        lm_package = {
            "xp.cfg": OmegaConf.to_yaml(self.lm.cfg),
            "best_state": {k: v.detach().cpu() for k, v in self.lm.state_dict().items()},
        }
        files = {}
        for name, package in (("state_dict.bin", lm_package), ("compression_state_dict.bin", self.compression_package)):
            if package is None:
                raise ValueError("a full fine-tune needs the base's compression package to be saved")
            buffer = io.BytesIO()
            torch.save(package, buffer)
            files[name] = buffer.getvalue()
        return tuned.write(dest, "full", base, files, training=info)


def heldout_pieces(count: int, seed: int) -> list[int]:
    """The pieces a training holds out (never trains on) to score the base model and the fine-tune: a tenth,
    at least one when there are several, none of a single piece; chosen by the seed alone."""
    if count < 2:
        return []
    held = max(1, round(HELDOUT_FRACTION * count))
    return sorted(random.Random(f"heldout:{seed}").sample(range(count), held))


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if isinstance(v, str | int | float | bool) or v is None}
