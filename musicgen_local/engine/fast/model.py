"""audiocraft's LMModel run over caches preallocated once, reusing its own weights and submodules.

Differences from the reference forward (`audiocraft.modules.transformer`), none of which change
the maths: self-attention keys/values are written in place into buffers of the longest length a
request can need instead of growing by `torch.cat`; cross-attention keys/values are projected once,
at prefill, instead of at every step; each row may sit at its own position (requests that joined at
different times), which a mask over the cache expresses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from audiocraft.modules import transformer as ac_transformer
from audiocraft.modules.codebooks_patterns import DelayedPatternProvider
from audiocraft.modules.transformer import create_sin_embedding

from ...settings import Settings
from ...tuned import TARGETS as LORA_TARGETS
from . import rows_kernel
from .adapters import AdapterSlots

PRODUCTS = ("rows", "torch")
_TARGETS = LORA_TARGETS  # the weights a LoRA may adapt, per layer (the heads are `linears.{k}.weight`)


def unsupported_reason(lm) -> str | None:
    """Why this LM cannot run on the fast path (None when it can)."""
    tr = lm.transformer
    if ac_transformer._efficient_attention_backend != "torch":
        return "xformers attention backend"
    if tr.positional_embedding != "sin" or tr.checkpointing != "none":
        return f"positional embedding {tr.positional_embedding!r} / checkpointing {tr.checkpointing!r}"
    pattern = lm.pattern_provider
    if type(pattern) is not DelayedPatternProvider or pattern.flatten_first or pattern.empty_initial:
        return "codebook pattern other than the plain delay pattern"
    if lm.two_step_cfg:
        return "two-step classifier-free guidance"
    for layer in tr.layers:
        attns = [layer.self_attn] + ([layer.cross_attention] if layer.cross_attention is not None else [])
        if not layer.norm_first:
            return "post-norm layers"
        if any(not a.custom or a.qk_layer_norm or a.kv_repeat != 1 or a.rope is not None for a in attns):
            return "attention variant (non-custom, qk norm, kv repeat or rope)"
        if layer.self_attn.past_context is not None or not layer.self_attn.memory_efficient:
            return "limited past context or einsum attention"
    return None


def lay_out_for_cpu(lm) -> None:
    """Store the transformer's and heads' weight matrices transposed ([in, out] contiguous, exposed as
    the usual [out, in] view): the CPU's matrix kernels stream a few rows times [in, out] about 1.4x
    faster than times [out, in]^T. Same values, same memory; every user of the LM (ours and
    audiocraft's own loop) sees the same layout, so they keep computing the same numbers."""
    if next(lm.parameters()).device.type != "cpu":
        return
    for module in [*lm.transformer.modules(), *lm.linears]:
        for name, param in list(module.named_parameters(recurse=False)):
            if (
                param.dim() == 2
                and (name == "in_proj_weight" or isinstance(module, torch.nn.Linear))
                and param.stride(0) != 1
            ):
                setattr(
                    module,
                    name,
                    torch.nn.Parameter(param.detach().t().contiguous().t(), requires_grad=param.requires_grad),
                )


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, _ = x.shape
    return x.view(b, t, heads, -1).transpose(1, 2)  # [B, T, H*D] -> [B, H, T, D]


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)  # [B, H, T, D] -> [B, T, H*D]


def _attend(attn, q, k, v, mask=None, causal=False) -> torch.Tensor:
    """Attention before the output projection: [B, H, T, D] each -> [B, T, H*D]."""
    dtype = q.dtype
    if attn.attention_as_float32:
        q, k, v = q.float(), k.float(), v.float()
    return _merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal).to(dtype))


class StaticLM:
    """Prefill and one-token steps over `rows` cache rows of up to `max_len` positions each.

    A row is one sequence (a request's conditional and unconditional halves are two rows). Buffers
    never move once allocated, so a CUDA graph captured over them stays valid; only a prompt or a
    window longer than any before (`grow_cross`, `grow`) reallocates.

    With torch's products every step multiplies all `rows` rows by the weights, however many are in
    use: BLAS kernels pick their algorithm by the number of rows (MKL on CPU: one for 1-2 rows,
    another from 4 on), and a row's result must not depend on how many other requests decode beside
    it. With `rows_kernel` a row's result depends on nothing else, so only the rows in use are
    multiplied. Attention, whose cost grows with rows, runs on the rows in use only.

    `products` picks the matrix products on CPU in float32: "rows" (`rows_kernel`: a row's result
    does not depend on the other rows at all, and it is faster) or "torch" (MKL, the products
    audiocraft's own loop makes, so that with two rows both decoders compute the same bits).
    """

    def __init__(
        self,
        lm,
        rows: int,
        max_len: int,
        cross_len: int = 64,
        products: str = "rows",
        loras: int = Settings.max_loras,
        lora_rank: int = Settings.max_lora_rank,
    ):
        if products not in PRODUCTS:
            raise ValueError(f"products must be one of {PRODUCTS}, not {products!r}")
        lay_out_for_cpu(lm)
        self.lm = lm
        first = next(lm.parameters())
        self.device, self.dtype = first.device, first.dtype
        use_rows = products == "rows" and self.device.type == "cpu" and self.dtype == torch.float32
        self.linear = rows_kernel.linear if use_rows and rows_kernel.available() else F.linear
        self.pads_rows = self.linear is F.linear
        tr = lm.transformer
        self.layers = list(tr.layers)
        self.heads = tr.layers[0].self_attn.num_heads
        head_dim = lm.dim // self.heads
        shape = (len(self.layers), rows, self.heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self._positions_for(max_len)
        self.has_cross = tr.layers[0].cross_attention is not None
        # LoRA fine-tunes in fixed slots, a slot per row (requests for them batch with the base)
        kernel = rows_kernel.lora_add if self.linear is rows_kernel.linear else None
        self.adapters = AdapterSlots(lm, rows, loras, lora_rank, self.device, self.dtype, kernel)
        self.adapting = False  # whether this prefill or step adds the adapters' products (the host decides)
        self.names = [{part: f"transformer.layers.{i}.{part}" for part in _TARGETS} for i in range(len(self.layers))]
        self.cross_k = self.cross_v = self.cross_valid = None
        if self.has_cross:
            self._allocate_cross(rows, cross_len)

    @property
    def rows(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def cross_len(self) -> int:
        return 0 if self.cross_k is None else self.cross_k.shape[3]

    def _positions_for(self, max_len: int) -> None:
        self.positions = torch.arange(max_len, device=self.device)
        self.pos_emb = create_sin_embedding(
            self.positions.view(1, -1, 1), self.lm.dim, max_period=self.lm.transformer.max_period, dtype=self.dtype
        )[0]  # [T, C]

    def grow(self, max_len: int) -> None:
        """Room for `max_len` positions per row (a window longer than any before); keeps what is cached."""
        old_len = self.max_len
        for name in ("k", "v"):
            old = getattr(self, name)
            new = torch.zeros((*old.shape[:3], max_len, old.shape[4]), dtype=old.dtype, device=old.device)
            new[..., :old_len, :] = old
            setattr(self, name, new)
        self._positions_for(max_len)

    def _allocate_cross(self, rows: int, length: int) -> None:
        shape = (len(self.layers), rows, self.heads, length, self.k.shape[-1])
        self.cross_k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.cross_v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.cross_valid = torch.zeros((rows, length), dtype=torch.bool, device=self.device)

    def grow_cross(self, length: int) -> None:
        """Room for `length` cross-attention positions (a longer prompt than any before); keeps rows."""
        old_k, old_v, old_valid, old_len = self.cross_k, self.cross_v, self.cross_valid, self.cross_len
        self._allocate_cross(self.rows, length)
        self.cross_k[..., :old_len, :] = old_k
        self.cross_v[..., :old_len, :] = old_v
        self.cross_valid[:, :old_len] = old_valid

    # -------------------------------------------------------------------------------- prefill

    def prefill(self, rows: slice, x: torch.Tensor, cross: torch.Tensor | None) -> torch.Tensor:
        """The fused input x [r, T0, C] run causally into cache `rows` (and the condition cross
        [r, Tc, C] projected into their cross-attention buffers); logits of the last position [r, K, card]."""
        self.adapting = self.adapters.any_in(rows)
        if cross is not None:
            self._project_cross(rows, cross)
        t0 = x.shape[1]
        first = rows.start
        x = x + self.lm.transformer.positional_scale * self.pos_emb[:t0]
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(i, layer, layer.norm1(x), first)
            self.k[i, rows, :, :t0] = k
            self.v[i, rows, :, :t0] = v
            attended = _attend(layer.self_attn, q, k, v, causal=t0 > 1)
            x = x + layer.layer_scale_1(self._out(i, "self_attn", layer.self_attn, attended, first))
            x = self._cross_and_ff(i, layer, x, rows, cross.shape[1] if cross is not None else 0, None)
        return self._logits(x, first)

    def _project_cross(self, rows: slice, cross: torch.Tensor) -> None:
        tc = cross.shape[1]
        for i, layer in enumerate(self.layers):
            attn = layer.cross_attention
            w, b = attn.in_proj_weight, attn.in_proj_bias
            dim = w.shape[0] // 3
            name = self.names[i]["cross_attention.in_proj_weight"]
            for cache, part in ((self.cross_k, slice(dim, 2 * dim)), (self.cross_v, slice(2 * dim, 3 * dim))):
                projected = self._lin(cross, w[part], None if b is None else b[part], name, rows.start, part)
                cache[i, rows, :, :tc] = _split_heads(projected, self.heads)
        self.cross_valid[rows] = False
        self.cross_valid[rows, :tc] = True

    # -------------------------------------------------------------------------------- decode

    def step(
        self,
        tokens: torch.Tensor,
        pos: torch.Tensor,
        length: int,
        cross_length: int,
        masked: bool = True,
        adapters: bool = False,
    ) -> torch.Tensor:
        """tokens [R, K] of rows 0..R-1 at positions pos [R] -> logits [R, K, card]; `adapters`: add the
        adapters' products (rows without one are left as they are), else the base alone.

        Attention reads cache positions [0, length) and cross positions [0, cross_length). `masked`
        hides, per row, the positions after its own and the cross positions past its prompt; without
        it (every row at position length - 1, every prompt cross_length long) the shapes are exactly
        the reference's. The masked form has the same shapes whatever the rows' positions: the form
        a CUDA graph captures.
        """
        n = tokens.shape[0]
        lm = self.lm
        self.adapting = adapters
        x = sum(lm.emb[k](tokens[:, k : k + 1]) for k in range(tokens.shape[1]))  # [n, 1, C]
        x = self._all_rows(x + lm.transformer.positional_scale * self.pos_emb[pos].unsqueeze(1))  # [rows, 1, C]
        mask = cross_mask = None
        if masked:
            mask = (self.positions[None, :length] <= pos[:, None]).view(n, 1, 1, length)
            if self.has_cross:
                cross_mask = self.cross_valid[:n, :cross_length].view(n, 1, 1, cross_length)
        index = pos.view(n, 1, 1, 1).expand(n, self.heads, 1, self.k.shape[-1])  # [n, H, 1, D]
        for i, layer in enumerate(self.layers):
            q, k, v = (t[:n] for t in self._qkv(i, layer, layer.norm1(x), 0))  # [n, H, 1, D] each
            keys, values = self.k[i, :n, :, :length], self.v[i, :n, :, :length]
            keys.scatter_(2, index, k)
            values.scatter_(2, index, v)
            attended = self._all_rows(_attend(layer.self_attn, q, keys, values, mask=mask))
            x = x + layer.layer_scale_1(self._out(i, "self_attn", layer.self_attn, attended, 0))
            x = self._cross_and_ff(i, layer, x, slice(0, n), cross_length, cross_mask)
        return self._logits(x, 0)[:n]

    def _all_rows(self, x: torch.Tensor) -> torch.Tensor:
        """x [n, T, C] padded with zero rows to [rows, T, C] (what every matrix product of a step sees)
        where the products need it."""
        if x.shape[0] == self.rows or not self.pads_rows:
            return x
        return torch.cat([x, x.new_zeros((self.rows - x.shape[0], *x.shape[1:]))])

    # -------------------------------------------------------------------------------- pieces

    def _lin(self, x: torch.Tensor, weight, bias, name: str, first: int, part: slice | None = None) -> torch.Tensor:
        """x times a base weight, plus the LoRA of the rows that have one (row j of x is cache row first + j)."""
        y = self.linear(x, weight, bias)
        if self.adapting:
            y = self.adapters.add(y, x, name, first, part)
        return y

    def _out(self, i: int, which: str, attn, attended: torch.Tensor, first: int) -> torch.Tensor:
        return self._lin(
            attended, attn.out_proj.weight, attn.out_proj.bias, self.names[i][f"{which}.out_proj.weight"], first
        )

    def _qkv(self, i: int, layer, x, first: int):
        attn = layer.self_attn
        projected = self._lin(
            x, attn.in_proj_weight, attn.in_proj_bias, self.names[i]["self_attn.in_proj_weight"], first
        )  # [B, T, 3C]
        b, t, _ = projected.shape
        packed = projected.view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # [3, B, H, T, D]
        return packed[0], packed[1], packed[2]

    def _cross_and_ff(self, i, layer, x, rows: slice, cross_length, cross_mask):
        """Cross-attention (cache `rows` are x's first rows) and the feed-forward block."""
        if self.has_cross:
            attn = layer.cross_attention
            dim = attn.in_proj_weight.shape[0] // 3
            bias = None if attn.in_proj_bias is None else attn.in_proj_bias[:dim]
            q = _split_heads(
                self._lin(
                    layer.norm_cross(x),
                    attn.in_proj_weight[:dim],
                    bias,
                    self.names[i]["cross_attention.in_proj_weight"],
                    rows.start,
                    slice(0, dim),
                ),
                self.heads,
            )
            count = rows.stop - rows.start
            keys = self.cross_k[i, rows, :, :cross_length]
            values = self.cross_v[i, rows, :, :cross_length]
            attended = _attend(attn, q[:count], keys, values, mask=cross_mask)
            if count < x.shape[0]:
                attended = torch.cat([attended, attended.new_zeros((x.shape[0] - count, *attended.shape[1:]))])
            x = x + layer.layer_scale_cross(self._out(i, "cross_attention", attn, attended, rows.start))
        return x + layer.layer_scale_2(self._feed_forward(i, layer, layer.norm2(x), rows.start))

    def _feed_forward(self, i: int, layer, x: torch.Tensor, first: int) -> torch.Tensor:
        """The layer's `_ff_block` (its dropouts are the identity in eval) through `self.linear`."""
        names = self.names[i]
        hidden = layer.activation(
            self._lin(x, layer.linear1.weight, layer.linear1.bias, names["linear1.weight"], first)
        )
        return self._lin(hidden, layer.linear2.weight, layer.linear2.bias, names["linear2.weight"], first)

    def _logits(self, x: torch.Tensor, first: int) -> torch.Tensor:
        if self.lm.out_norm is not None:
            x = self.lm.out_norm(x)
        last = x[:, -1]
        heads = [
            self._lin(last, head.weight, head.bias, f"linears.{k}.weight", first)
            for k, head in enumerate(self.lm.linears)
        ]
        return torch.stack(heads, dim=1)  # [R, K, card]
