"""A training's device memory, estimated before it starts: what the device's memory plan must find room for.

Pure arithmetic over the model's sizes (`ModelSizes`: from a checkpoint's LM package by `sizes_from_checkpoint`, before
anything is built, or from a built LM by `sizes_of`) and the training's inputs; nothing is allocated. What it counts:

- the weights: the LM as the trainer holds it (LoRA: as served, 2 bytes a parameter on CUDA; a full fine-tune:
  float32 master weights, and on CUDA autocast's half-precision copy of them for the length of a micro-batch),
  plus whatever else the model holds on the device (codec, text encoder, htdemucs: `other_bytes`);
- what is trained: parameters, gradients and AdamW's two moments, 4 bytes each (the adapters, or every LM
  weight);
- a micro-batch's activations at the crop length: what our forward (training.forward) keeps for its backward,
  counted tensor by tensor per layer (the residual stream at each norm, the normed inputs of the products, the
  packed q/k/v and the attention's output, the feed-forward's inner activations, the dropout masks when the
  model has dropout), and at the heads each codebook's log-probabilities in float32; plus the backward's
  largest transient (one codebook's logits' gradient).

`bench/training_memory.py` compares it with what a micro-batch's backward really keeps (saved tensors counted
as they are saved) and with the process' peak memory, on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

CROSS_POSITIONS = 64  # text-encoder positions a description gives, at most (the cross-attention's keys)


@dataclass(frozen=True)
class ModelSizes:
    lm_params: int
    dim: int
    layers: int
    ffn: int  # the feed-forward's inner width
    codebooks: int
    card: int
    max_delay: int  # the delay pattern's largest delay
    cross: bool  # cross-attention layers (text-to-music); melody models prepend their conditions instead
    prefix: int = 0  # positions prepended to the sequence (a melody model's chroma)
    dropout: bool = False  # residual dropout in training (its masks are kept for the backward)
    other_bytes: int = 0  # the rest of the model on the device: codec, text encoder, htdemucs


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes on the device, by what holds them."""

    weights: int
    trained: int  # parameters, gradients, AdamW's moments
    activations: int  # kept for the backward, and the backward's largest transient

    @property
    def total(self) -> int:
        return self.weights + self.trained + self.activations


def adapter_params(sizes: ModelSizes, rank: int) -> int:
    """A LoRA's parameters: rank x (in + out) for every target (tuned.TARGETS and the heads)."""
    d, f = sizes.dim, sizes.ffn
    per_layer = (d + 3 * d) + (d + d) + (d + f) + (f + d)  # self q/k/v, self out, feed-forward pair
    if sizes.cross:
        per_layer += (d + 3 * d) + (d + d)
    return rank * (sizes.layers * per_layer + sizes.codebooks * (d + sizes.card))


def activation_bytes(sizes: ModelSizes, rows: int, frames: int, dtype_bytes: int) -> int:
    """What a micro-batch of `rows` crops of `frames` keeps for its backward, and the backward's largest
    transient."""
    d = sizes.dim
    tokens = rows * (frames + sizes.max_delay + 1 + sizes.prefix)
    masks = 1 if sizes.dropout else 0
    # self-attention: the residual at its norm, the normed input, packed q/k/v, the attention's output (kept by
    # the attention and, merged across heads, by the output projection); cross-attention: the residual, the
    # normed input, q, the output twice; feed-forward: the residual, the normed input, the inner activation
    # before and after the nonlinearity
    per_token = (6 * d + masks * d) + (3 * d + 2 * sizes.ffn + masks * d)
    if sizes.cross:
        per_token += 5 * d + masks * d
    layers = sizes.layers * tokens * per_token * dtype_bytes
    cross_keys = sizes.layers * rows * CROSS_POSITIONS * 3 * d * dtype_bytes if sizes.cross else 0
    heads = 2 * tokens * d * dtype_bytes + sizes.codebooks * tokens * sizes.card * 4  # log-probabilities, float32
    transient = 2 * tokens * sizes.card * 4  # one codebook's logits and their gradient, in the backward
    return layers + cross_keys + heads + transient


def training_bytes(
    sizes: ModelSizes, params, *, cuda: bool, micro_batch: int = 4, frames: int = 1500
) -> TrainingMemory:
    """The device bytes of a training with `params` (training.params' inputs: lora_rank and batch_size are read)
    whose micro-batches (the trainer's `micro_batch`, at most batch_size pieces) are crops of `frames` (30 s
    at 50 Hz, the longest a piece gives)."""
    rows = max(1, min(micro_batch, params.batch_size))
    compute_bytes = 2 if cuda else 4  # autocast on CUDA, float32 on the CPU
    if params.lora_rank:
        weights = sizes.lm_params * compute_bytes
        trained = adapter_params(sizes, params.lora_rank) * 4 * 4
    else:
        weights = sizes.lm_params * (4 + (2 if cuda else 0))
        trained = sizes.lm_params * 4 * 3
    activations = activation_bytes(sizes, rows, frames, compute_bytes)
    return TrainingMemory(weights + sizes.other_bytes, trained, activations)


def sizes_of(lm, other_bytes: int = 0) -> ModelSizes:
    """A built MusicGen LM's sizes (reads its modules; allocates nothing)."""
    layer = lm.transformer.layers[0]
    conditioners = lm.condition_provider.conditioners
    prepended = lm.fuser.fuse2cond.get("prepend", [])
    prefix = int(getattr(conditioners["self_wav"], "chroma_len", 0)) if "self_wav" in prepended else 0
    return ModelSizes(
        lm_params=sum(p.numel() for name, p in lm.named_parameters() if not name.startswith("condition_provider.")),
        dim=lm.dim,
        layers=len(lm.transformer.layers),
        ffn=layer.linear1.out_features,
        codebooks=lm.num_codebooks,
        card=lm.card,
        max_delay=max(lm.pattern_provider.delays),
        cross=layer.cross_attention is not None,
        prefix=prefix,
        dropout=layer.dropout1.p > 0,
        other_bytes=other_bytes,
    )


def sizes_from_checkpoint(lm_package: dict, other_bytes: int = 0) -> ModelSizes:
    """The sizes of the LM a checkpoint package (`state_dict.bin`: its `xp.cfg` and `best_state`) builds, read
    before anything is built (what the loader stage holds in host memory)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(lm_package["xp.cfg"])
    t = cfg.transformer_lm
    fuser = cfg.get("fuser", {})
    prefix = 0
    if "self_wav" in list(fuser.get("prepend", [])):  # the chroma's frames over a segment (centred STFT)
        chroma = cfg.conditioners.self_wav.chroma_stem
        hop = 2 ** int(chroma.radix2_exp) // 4
        prefix = 1 + int(cfg.dataset.segment_duration * int(chroma.sample_rate)) // hop
    state = lm_package["best_state"]
    return ModelSizes(
        lm_params=sum(v.numel() for k, v in state.items() if not k.startswith("condition_provider.")),
        dim=int(t.dim),
        layers=int(t.num_layers),
        ffn=int(t.hidden_scale * t.dim),
        codebooks=int(t.n_q),
        card=int(t.card),
        max_delay=max(cfg.codebooks_pattern.delay.delays),
        cross=len(list(fuser.get("cross", []))) > 0,
        prefix=prefix,
        dropout=float(t.get("dropout", 0.1)) > 0,  # StreamingTransformer's default when the config has none
        other_bytes=other_bytes,
    )
