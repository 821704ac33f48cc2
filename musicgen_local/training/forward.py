"""The training forward: audiocraft's LMModel maths over its own weights, with LoRA's low-rank path on every target.

Why our own forward rather than audiocraft's modules with hooks: audiocraft multiplies the packed q/k/v weight
(`in_proj_weight`) inside its attention's forward, so a LoRA on it had to be a parametrization that rebuilt the
tuned weight (W + s B A) and computed its full weight gradient at every update; that and the reordered logits were
most of what made a step slower than transformers + peft's. Here every target, the packed ones included (the
cross-attention's q and k/v are row slices of its packed weight), is the frozen base product plus
`scale * (x @ A^T) @ B^T`, accumulated into the base product's output (`addmm_`), with a backward of its own
(`_LowRankLinear`) that never forms a gradient for the frozen weight.

What it computes is audiocraft's (tests hold the loss equal to cross-entropy of `LMModel.compute_predictions`
with the adapter merged into the weights), for the structures the released MusicGens have: pre-norm layers,
sinusoidal positions, audiocraft's "custom" attention without rope, qk norm, kv repeat or limited context, and
the plain delay pattern (`unsupported_reason` names what else there is).

Dropout, while training: on each block's output (the residual dropouts, at the layer's own rate), drawn from a
generator the training owns; not on the attention weights nor inside the feed-forward block, as transformers'
MusicGen (whose attention and activation dropouts are 0); attention dropout would also keep PyTorch's attention
off its fused kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from audiocraft.modules.codebooks_patterns import DelayedPatternProvider
from audiocraft.modules.transformer import create_sin_embedding

from .lora import LowRank


def unsupported_reason(lm) -> str | None:
    """Why this LM's structure is not one this forward computes (None when it is)."""
    tr = lm.transformer
    if tr.positional_embedding != "sin":
        return f"positional embedding {tr.positional_embedding!r}"
    pattern = lm.pattern_provider
    if type(pattern) is not DelayedPatternProvider or pattern.flatten_first or pattern.empty_initial:
        return "codebook pattern other than the plain delay pattern"
    for layer in tr.layers:
        attentions = [layer.self_attn] + ([layer.cross_attention] if layer.cross_attention is not None else [])
        if not layer.norm_first:
            return "post-norm layers"
        if any(not a.custom or a.qk_layer_norm or a.kv_repeat != 1 or a.rope is not None for a in attentions):
            return "attention variant (non-custom, qk norm, kv repeat or rope)"
        if layer.self_attn.past_context is not None:
            return "limited past context"
    return None


class Dropout:
    """Inverted dropout whose masks come from `generator` (one the training owns, on the model's device).

    A mask element is a 16-bit integer compared with p's threshold (p in steps of 1/65536), four of them
    from one 64-bit draw: on the CPU, drawing the integers is a few times cheaper than `bernoulli_`'s one
    double per element (whose masks were 5-7 % of a LoRA step at `mini` sizes)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def __call__(self, x: torch.Tensor, p: float) -> torch.Tensor:
        if p == 0.0:
            return x
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device)
        words.random_(-(2**63), None, generator=self.generator)  # every bit uniform
        keep = words.view(torch.int16)[:n].view(x.shape) >= round(p * 65536) - 32768
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


def project(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    adapter: LowRank | None,
    rows: slice | None = None,
) -> torch.Tensor:
    """x @ W^T (+ b), plus `scale * (x @ A^T) @ B^T` when the weight has an adapter. `rows` takes a slice of a
    packed weight's outputs (and the same rows of its bias and of B)."""
    if rows is not None:
        weight = weight[rows]
        bias = bias[rows] if bias is not None else None
    if adapter is None:
        return F.linear(x, weight, bias)  # [..., out]
    b = adapter.lora_B if rows is None else adapter.lora_B[rows]  # [out, r]
    flat = _LowRankLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias, adapter.lora_A, b, adapter.scale)
    return flat.view(*x.shape[:-1], flat.shape[-1])


class _LowRankLinear(torch.autograd.Function):
    """y = x W^T (+ b) + s (x A^T) B^T for x [N, in] and a frozen W (and b): gradients for x, A and B only.

    Written out rather than left to autograd: the input's gradient is one product and one accumulating
    low-rank product (g W, then += (g B) A in place) where autograd sums two [N, in] branches, the scale
    multiplies [N, r] and [out, r] tensors only, and a target is one autograd node instead of five. Under
    autocast it computes in the autocast dtype, as F.linear would, and hands A and B float32 gradients."""

    @staticmethod
    def forward(ctx, x, weight, bias, a, b, scale: float):
        device = x.device.type
        cast = torch.is_autocast_enabled(device)
        if cast:  # compute in autocast's dtype, as F.linear would, with autocast off for the in-place product
            dtype = torch.get_autocast_dtype(device)
            with torch.autocast(device, enabled=False):
                return _LowRankLinear._forward(ctx, x.to(dtype), weight, bias, a, b, scale)
        return _LowRankLinear._forward(ctx, x, weight, bias, a, b, scale)

    @staticmethod
    def _forward(ctx, x, weight, bias, a, b, scale: float):
        dtype = x.dtype
        w, a_c, b_c = weight.to(dtype), a.to(dtype), b.to(dtype)
        low = torch.mm(x, a_c.t())  # [N, r]
        y = torch.addmm(bias.to(dtype), x, w.t()) if bias is not None else torch.mm(x, w.t())
        y.addmm_(low, b_c.t(), alpha=scale)  # [N, out]
        # The weight is kept as it is and cast again in the backward: under autocast a cast copy of every
        # frozen weight would otherwise live from its forward to its backward (the whole LM, once more).
        ctx.save_for_backward(x, low, weight, a_c, b_c)
        ctx.scale, ctx.dtypes = scale, (a.dtype, b.dtype)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, low, weight, a, b = ctx.saved_tensors
        grad = grad.to(x.dtype)  # a no-op but under autocast, whose dtype the backward keeps
        grad_low = torch.mm(grad, b).mul_(ctx.scale)  # [N, r]
        grad_b = torch.mm(grad.t(), low).mul_(ctx.scale)  # [out, r]
        grad_a = torch.mm(grad_low.t(), x)  # [r, in]
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(grad, weight.to(x.dtype)).addmm_(grad_low, a)  # [N, in]
        a_dtype, b_dtype = ctx.dtypes
        return grad_x, None, None, grad_a.to(a_dtype), grad_b.to(b_dtype), None


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, _ = x.shape
    return x.view(b, t, heads, -1).transpose(1, 2)  # [B, T, H*Dh] -> [B, H, T, Dh]


def _attend(attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(Dh)) v over heads: [B, H, T, Dh] each -> [B, T, H*Dh]."""
    dtype = q.dtype
    if attention.attention_as_float32:
        q, k, v = q.float(), k.float(), v.float()
    x = F.scaled_dot_product_attention(q, k, v, is_causal=causal).to(dtype)
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


class TrainingForward:
    """The LM's forward and the teacher-forced loss, with `adapters` (parameter name -> LowRank; empty for the
    base model or a full fine-tune) on their targets, and `dropout` (None: none, as in evaluation)."""

    def __init__(self, lm, adapters: dict[str, LowRank] | None = None) -> None:
        reason = unsupported_reason(lm)
        if reason is not None:
            raise ValueError(f"this LM cannot be fine-tuned here: {reason}")
        self.lm = lm
        self.adapters = adapters or {}

    def _adapter(self, name: str) -> LowRank | None:
        return self.adapters.get(name)

    def hidden(self, sequence: torch.Tensor, condition_tensors: dict, dropout: Dropout | None) -> torch.Tensor:
        """sequence [B, K, S] -> the output norm's [B, P + S, D] (P: the prepended conditions' length)."""
        lm = self.lm
        x = sum(lm.emb[k](sequence[:, k]) for k in range(sequence.shape[1]))  # [B, S, D]
        x, cross = lm.fuser(x, condition_tensors)
        tr = lm.transformer
        positions = torch.arange(x.shape[1], device=x.device).view(1, -1, 1)
        x = x + tr.positional_scale * create_sin_embedding(positions, x.shape[-1], tr.max_period, dtype=x.dtype)
        for i, layer in enumerate(tr.layers):
            x = self._layer(i, layer, x, cross, dropout)
        return lm.out_norm(x) if lm.out_norm is not None else x

    def _layer(self, i: int, layer, x: torch.Tensor, cross: torch.Tensor | None, dropout) -> torch.Tensor:
        name = f"transformer.layers.{i}."
        drop = dropout if dropout is not None else (lambda y, p: y)
        x = x + layer.layer_scale_1(drop(self._self_attention(name, layer.self_attn, layer.norm1(x)), layer.dropout1.p))
        if layer.cross_attention is not None:
            attended = self._cross_attention(name, layer.cross_attention, layer.norm_cross(x), cross)
            x = x + layer.layer_scale_cross(drop(attended, layer.dropout_cross.p))
        ff1, ff2 = layer.linear1, layer.linear2
        inner = layer.activation(project(layer.norm2(x), ff1.weight, ff1.bias, self._adapter(name + "linear1.weight")))
        out = project(inner, ff2.weight, ff2.bias, self._adapter(name + "linear2.weight"))
        return x + layer.layer_scale_2(drop(out, layer.dropout2.p))

    def _self_attention(self, name: str, attention, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        adapter = self._adapter(name + "self_attn.in_proj_weight")
        packed = project(x, attention.in_proj_weight, attention.in_proj_bias, adapter)  # [B, T, 3D]
        q, k, v = (_heads(part, attention.num_heads) for part in packed.split(d, dim=-1))  # 3 x [B, H, T, Dh]
        out = _attend(attention, q, k, v, causal=True)
        return self._out(name + "self_attn.", attention, out)

    def _cross_attention(self, name: str, attention, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        d, heads = x.shape[-1], attention.num_heads
        adapter = self._adapter(name + "cross_attention.in_proj_weight")
        weight, bias = attention.in_proj_weight, attention.in_proj_bias
        q = project(x, weight, bias, adapter, rows=slice(0, d))  # [B, T, D]
        kv = project(source, weight, bias, adapter, rows=slice(d, 3 * d))  # [B, C, 2D]
        k, v = kv.split(d, dim=-1)
        out = _attend(attention, _heads(q, heads), _heads(k, heads), _heads(v, heads), causal=False)
        return self._out(name + "cross_attention.", attention, out)

    def _out(self, prefix: str, attention, x: torch.Tensor) -> torch.Tensor:
        proj = attention.out_proj
        return project(x, proj.weight, proj.bias, self._adapter(prefix + "out_proj.weight"))

    def loss(self, codes: torch.Tensor, condition_tensors: dict, dropout: Dropout | None = None) -> torch.Tensor:
        """The teacher-forced loss of `codes` [B, K, T]: the mean over codebooks of each one's cross-entropy on
        its valid positions (audiocraft's). With the plain delay pattern, codebook k's frame t is predicted by
        the output at pattern step t + delay_k: each codebook's head runs on the steps it predicts from, so
        no [B, K, S, card] logits are built or reordered."""
        lm = self.lm
        frames = codes.shape[-1]
        sequence, _, _ = lm.pattern_provider.get_pattern(frames).build_pattern_sequence(
            codes, lm.special_token_id, keep_only_valid_steps=True
        )  # [B, K, S]
        hidden = self.hidden(sequence, condition_tensors, dropout)  # [B, P + S, D]
        steps = sequence.shape[-1]
        prefix = hidden.shape[1] - steps  # conditions prepended (melody models)
        total = hidden.new_zeros((), dtype=torch.float32)
        for k, delay in enumerate(lm.pattern_provider.delays):
            valid = min(frames, steps - delay - 1)
            head, start = lm.linears[k], prefix + delay
            adapter = self._adapter(f"linears.{k}.weight")
            logits = project(hidden[:, start : start + valid], head.weight, head.bias, adapter)  # [B, valid, card]
            target = codes[:, k, :valid]
            total = total + F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1))
        return total / codes.shape[1]
