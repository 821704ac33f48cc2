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
  conditions on the chroma of the piece's own audio, as audiocraft trains them;
- AdamW, a warmup then cosine / linear / constant decay, gradient accumulation over micro-batches to
  reach `batch_size`, mixed precision on CUDA;
- LoRA (training.lora) by default, a full fine-tune of the LM with `lora_rank` 0.

`work()` yields after each unit (one piece encoded, or one micro-batch's forward and backward), so
that the device loop can decode between units. A checkpoint is written every few updates; a new
Trainer on the same `scratch` resumes from it.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import tuned
from . import lora
from .dataset import Piece

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
CODES = "codes.pt"
SAMPLE_RATE = 32000


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
        self.rng = random.Random(self.seed)  # pieces, crops, condition dropout
        # The model's own randomness in training mode (its dropout layers, T5's word dropout) draws from
        # torch's and Python's global generators: each unit runs with the trainer's states swapped in,
        # so that a training is reproducible and leaves the process' generators as it found them.
        self.global_states = _seeded_states(self.seed)
        self.full = params.lora_rank == 0
        self.alpha = float(params.lora_alpha if params.lora_alpha is not None else 2 * params.lora_rank)
        self.melody = "self_wav" in self.lm.condition_provider.conditioners
        self.autocast_dtype = self._autocast_dtype()
        with torch.inference_mode(False):
            self._prepare_parameters()
        self.step = 0
        self.codes: list[torch.Tensor | None] = [None] * len(pieces)
        self.losses: list[float] = []

    # ------------------------------------------------------------------------------------ setup

    def _autocast_dtype(self) -> torch.dtype | None:
        if self.device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def _prepare_parameters(self) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        dropout_as_transformers(self.lm)
        if self.full:
            self.lm.float()  # float32 master weights; the forward runs in autocast on CUDA
            trainable = [p for p in self.lm.parameters()]
            for p in trainable:
                p.requires_grad_(True)
            self.adapters = {}
        else:
            self.adapters = lora.attach(self.lm, self.params.lora_rank, self.alpha, generator)
            trainable = [p for m in self.adapters.values() for p in m.parameters()]
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
        yield from self._encode_all()
        start, start_step = time.monotonic(), self.step
        self.lm.train()
        try:
            while self.step < self.total:
                losses = []
                for _ in range(self.accumulate):
                    with torch.inference_mode(False), torch.enable_grad(), self._own_generators():
                        losses.append(self._micro_step())
                    yield None
                with torch.inference_mode(False):
                    self._update()
                self.step += 1
                self.losses.append(sum(losses) / len(losses))
                if self.step % self.checkpoint_every == 0 or self.step == self.total:
                    self._checkpoint()
                elapsed = time.monotonic() - start
                per_step = elapsed / (self.step - start_step)
                yield Progress(
                    self.step,
                    self.total,
                    1 + (self.step - 1) // self.params.updates_per_epoch,
                    self.params.epochs,
                    self.losses[-1],
                    self.scheduler.get_last_lr()[0],
                    elapsed,
                    per_step * (self.total - self.step),
                )
        finally:
            self.lm.eval()

    def _encode_all(self) -> Iterator[None]:
        cached = self.scratch / CODES
        if cached.is_file():
            self.codes = torch.load(cached, map_location=self.device, weights_only=True)
            return
        import soundfile

        for i, piece in enumerate(self.pieces):
            wav, rate = soundfile.read(str(piece.wav), dtype="float32", always_2d=True)
            if rate != SAMPLE_RATE:
                raise ValueError(f"{piece.wav} is at {rate} Hz, not {SAMPLE_RATE}")
            audio = torch.from_numpy(wav.T.copy())[None].to(self.device)  # [1, C, T]
            with torch.no_grad():
                codes, _ = self.model.compression_model.encode(audio)
            self.codes[i] = codes[0]
            yield None
        frames = sum(c.shape[-1] for c in self.codes)
        self.say(f"Encoded {len(self.pieces)} pieces: {frames} frames of {self.codes[0].shape[0]} codebooks.")
        torch.save(self.codes, cached)

    def _batch(self) -> tuple[torch.Tensor, list, list[int]]:
        """A micro-batch: pieces drawn at random, cropped at random to the shortest of them."""
        chosen = [self.rng.randrange(len(self.pieces)) for _ in range(self.micro)]
        length = min(self.codes[i].shape[-1] for i in chosen)
        length = min(length, int(self.model.max_duration * self.model.frame_rate))
        codes, starts = [], []
        for i in chosen:
            start = self.rng.randrange(self.codes[i].shape[-1] - length + 1)
            codes.append(self.codes[i][:, start : start + length])
            starts.append(start)
        return torch.stack(codes), chosen, starts

    def _attributes(self, chosen: list[int], starts: list[int], frames: int) -> list:
        from audiocraft.modules.conditioners import ConditioningAttributes, WavCondition, dropout_condition

        attributes = []
        for i, start in zip(chosen, starts, strict=True):
            attr = ConditioningAttributes(text={"description": self.pieces[i].description or None})
            if self.melody:
                wav = self._wav(i, start, frames)
                attr.wav["self_wav"] = WavCondition(
                    wav[None],
                    torch.tensor([wav.shape[-1]], device=self.device),
                    sample_rate=[SAMPLE_RATE],
                    path=[None],
                    seek_time=[0.0],
                )
            if self.rng.random() < self.params.cfg_p:  # drop every condition of this piece
                for kind in ("text", "wav"):
                    for name in list(getattr(attr, kind)):
                        dropout_condition(attr, kind, name)
            attributes.append(attr)
        return attributes

    def _wav(self, i: int, start_frame: int, frames: int) -> torch.Tensor:
        import soundfile

        hop = SAMPLE_RATE // int(self.model.frame_rate)
        wav, _ = soundfile.read(
            str(self.pieces[i].wav), dtype="float32", always_2d=True, start=start_frame * hop, frames=frames * hop
        )
        return torch.from_numpy(wav.T.copy()).to(self.device)

    def _micro_step(self) -> float:
        codes, chosen, starts = self._batch()
        attributes = self._attributes(chosen, starts, codes.shape[-1])
        with torch.autocast(
            self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None
        ):
            tokenized = self.lm.condition_provider.tokenize(attributes)
            condition_tensors = self.lm.condition_provider(tokenized)
            loss = delayed_cross_entropy(self.lm, codes, condition_tensors)
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

    @contextmanager
    def _own_generators(self):
        outside = _global_states()
        _set_global_states(self.global_states)
        try:
            yield
        finally:
            self.global_states = _global_states()
            _set_global_states(outside)

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
            "losses": self.losses,
            "seed": self.seed,
            "global_states": self.global_states,
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
        self.global_states = state["global_states"]
        self.step, self.losses, self.seed = state["step"], state["losses"], state["seed"]
        self.say(f"Resuming from the checkpoint at step {self.step}/{self.total}.")

    # ------------------------------------------------------------------------------------ the result

    def save(self, dest: Path) -> Path:
        """The fine-tune as a `tuned` tar at `dest`."""
        info = {
            "steps": self.step,
            "loss": self.losses[-1] if self.losses else float("nan"),
            "first_loss": self.losses[0] if self.losses else float("nan"),
            "seed": self.seed,
            "pieces": len(self.pieces),
            "input": _plain(self.params.model_dump()),
        }
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


def dropout_as_transformers(lm) -> None:
    """While fine-tuning, dropout where transformers' MusicGen has it: on each block's output (the residual
    dropouts stay as configured), not on the attention weights nor inside the feed-forward block
    (transformers' attention_dropout and activation_dropout are 0). Attention dropout also keeps PyTorch's
    attention off its fused kernels, on CPU and on GPU."""
    for layer in lm.transformer.layers:
        layer.dropout.p = 0.0  # between the feed-forward's two products
        for attention in (layer.self_attn, layer.cross_attention):
            if attention is not None:
                attention.dropout = 0.0


def _global_states() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda, random.getstate()


def _set_global_states(states: tuple) -> None:
    cpu, cuda, python = states
    torch.set_rng_state(cpu)
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(python)


def _seeded_states(seed: int) -> tuple:
    outside = _global_states()
    torch.manual_seed(seed)
    random.seed(seed)
    seeded = _global_states()
    _set_global_states(outside)
    return seeded


def delayed_cross_entropy(lm, codes: torch.Tensor, condition_tensors: dict) -> torch.Tensor:
    """The teacher-forced loss of `codes` [B, K, T]: what `cross_entropy` of `LMModel.compute_predictions` gives
    (a test holds them equal), computed where the logits are. With the plain delay pattern, codebook k's
    frame t sits at pattern step t + delay_k + 1 and is predicted by the output at step t + delay_k: a slice
    of the model's output per codebook, so the whole [B, card, K, S] logits are never reordered (that
    copy and its backward were a tenth of an update)."""
    from audiocraft.modules.codebooks_patterns import DelayedPatternProvider

    provider = lm.pattern_provider
    if type(provider) is not DelayedPatternProvider or provider.flatten_first or provider.empty_initial:
        out = lm.compute_predictions(codes, [], condition_tensors)
        return cross_entropy(out.logits.float(), codes, out.mask)
    frames = codes.shape[-1]
    sequence, _, _ = provider.get_pattern(frames).build_pattern_sequence(
        codes, lm.special_token_id, keep_only_valid_steps=True
    )
    logits = lm(sequence, [], condition_tensors)  # [B, K, S, card]
    steps = logits.shape[2]
    total = logits.new_zeros((), dtype=torch.float32)
    for k, delay in enumerate(provider.delays):
        valid = min(frames, steps - delay - 1)
        predicted = logits[:, k, delay : delay + valid].float()
        total = total + F.cross_entropy(predicted.reshape(-1, predicted.shape[-1]), codes[:, k, :valid].reshape(-1))
    return total / codes.shape[1]


def cross_entropy(logits: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over codebooks of each codebook's cross-entropy on its valid positions (audiocraft's loss).
    Computed over every position at once and masked after: cheaper than selecting the valid ones first,
    and the invalid positions' logits (NaN, from the pattern) are zeroed so that no NaN reaches a gradient."""
    logits = logits.masked_fill(~mask.unsqueeze(-1), 0.0)
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1), reduction="none")
    losses = losses.view_as(codes) * mask
    per_codebook = losses.sum(dim=(0, 2)) / mask.sum(dim=(0, 2)).clamp(min=1)
    return per_codebook.mean()


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if isinstance(v, str | int | float | bool) or v is None}
