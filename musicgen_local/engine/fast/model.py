"""audiocraft's LMModel run over a preallocated KV cache, reusing its own weights and submodules.

Differences from the reference forward (`audiocraft.modules.transformer`), none of which change
the maths: self-attention keys/values are written in place into buffers of the final length
instead of growing by `torch.cat`; cross-attention keys/values are projected once at prefill
instead of at every step; each row may sit at its own position (batched requests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from audiocraft.modules import transformer as ac_transformer
from audiocraft.modules.transformer import create_sin_embedding


def unsupported_reason(lm) -> str | None:
    """Why this LM cannot run on the fast path (None when it can)."""
    tr = lm.transformer
    if ac_transformer._efficient_attention_backend != "torch":
        return "xformers attention backend"
    if tr.positional_embedding != "sin" or tr.checkpointing != "none":
        return f"positional embedding {tr.positional_embedding!r} / checkpointing {tr.checkpointing!r}"
    for layer in tr.layers:
        attns = [layer.self_attn] + ([layer.cross_attention] if layer.cross_attention is not None else [])
        if not layer.norm_first:
            return "post-norm layers"
        if any(not a.custom or a.qk_layer_norm or a.kv_repeat != 1 or a.rope is not None for a in attns):
            return "attention variant (non-custom, qk norm, kv repeat or rope)"
        if layer.self_attn.past_context is not None or not layer.self_attn.memory_efficient:
            return "limited past context or einsum attention"
    return None


class KVCache:
    """Self-attention keys/values for every layer: [L, R, H, T_max, D], written in place."""

    def __init__(self, layers: int, rows: int, heads: int, max_len: int, head_dim: int, dtype, device):
        shape = (layers, rows, heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def grow(self, rows: int, max_len: int) -> None:
        """`rows` more rows at the end, and room for max_len positions (one copy when requests join)."""
        layers, old_rows, heads, old_len, head_dim = self.k.shape
        shape = (layers, old_rows + rows, heads, max(old_len, max_len), head_dim)
        for name in ("k", "v"):
            old = getattr(self, name)
            new = torch.zeros(shape, dtype=old.dtype, device=old.device)
            new[:, :old_rows, :, :old_len] = old
            setattr(self, name, new)

    def keep(self, rows: torch.Tensor) -> None:
        """Drop finished rows (one copy when a request leaves the batch)."""
        self.k, self.v = self.k[:, rows].contiguous(), self.v[:, rows].contiguous()


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, _ = x.shape
    return x.view(b, t, heads, -1).transpose(1, 2)  # [B, T, H*D] -> [B, H, T, D]


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)  # [B, H, T, D] -> [B, T, H*D]


def _sdpa(attn, q, k, v, mask=None, causal=False) -> torch.Tensor:
    dtype = q.dtype
    if attn.attention_as_float32:
        q, k, v = q.float(), k.float(), v.float()
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    return attn.out_proj(_merge_heads(out.to(dtype)))


class FastLM:
    """Prefill and one-token decode steps for `rows` sequences (CFG branches are separate rows).

    Rows can be added (requests joining, `add_rows` + `add_cross` + `prefill`) and removed (`keep`).
    """

    def __init__(self, lm, rows: int, max_len: int):
        self.lm = lm
        first = next(lm.parameters())
        self.device, self.dtype = first.device, first.dtype
        tr = lm.transformer
        self.heads = tr.layers[0].self_attn.num_heads
        self.cache = KVCache(len(tr.layers), rows, self.heads, max_len, lm.dim // self.heads, self.dtype, self.device)
        self._positions_for(max_len)
        self.has_cross = tr.layers[0].cross_attention is not None
        self.cross_k: list[torch.Tensor] = []  # per layer [R, H, Tc, D]
        self.cross_v: list[torch.Tensor] = []
        self.cross_len = torch.zeros(0, dtype=torch.long, device=self.device)  # [R] unpadded Tc of each row
        self.cross_mask: torch.Tensor | None = None  # [R, 1, 1, Tc] when rows have different Tc

    @property
    def rows(self) -> int:
        return self.cache.k.shape[1]

    def _positions_for(self, max_len: int) -> None:
        self.positions = torch.arange(max_len, device=self.device)
        tr = self.lm.transformer
        self.pos_emb = create_sin_embedding(self.positions.view(1, -1, 1), self.lm.dim, max_period=tr.max_period,
                                            dtype=self.dtype)[0]

    def add_rows(self, rows: int, max_len: int) -> slice:
        """Room for `rows` more rows, each up to max_len positions; returns their slice of the cache."""
        start = self.rows
        self.cache.grow(rows, max_len)
        if self.cache.k.shape[3] > len(self.positions):
            self._positions_for(self.cache.k.shape[3])
        return slice(start, self.rows)

    # -------------------------------------------------------------------------------- prefill

    def add_cross(self, sources: list[torch.Tensor]) -> None:
        """Project every layer's cross-attention keys/values once, for rows added last.
        sources: per row group [r, Tc_i, C], in row order."""
        if not self.has_cross or not sources:
            return
        lengths = torch.cat([torch.full((s.shape[0],), s.shape[1], device=self.device) for s in sources])
        old_len = self.cross_k[0].shape[2] if self.cross_k else 0
        longest = max(old_len, *(s.shape[1] for s in sources))
        padded = torch.cat([F.pad(s, (0, 0, 0, longest - s.shape[1])) for s in sources])  # [r, Tc, C]
        for i, layer in enumerate(self.lm.transformer.layers):
            attn = layer.cross_attention
            w, b = attn.in_proj_weight, attn.in_proj_bias
            dim = w.shape[0] // 3
            k = _split_heads(F.linear(padded, w[dim : 2 * dim], None if b is None else b[dim : 2 * dim]), self.heads)
            v = _split_heads(F.linear(padded, w[2 * dim :], None if b is None else b[2 * dim :]), self.heads)
            if i < len(self.cross_k):  # rows already there: pad them to the new length, then append
                pad = (0, 0, 0, longest - old_len)
                k = torch.cat([F.pad(self.cross_k[i], pad), k])
                v = torch.cat([F.pad(self.cross_v[i], pad), v])
                self.cross_k[i], self.cross_v[i] = k, v
            else:
                self.cross_k.append(k)
                self.cross_v.append(v)
        self.cross_len = torch.cat([self.cross_len, lengths])
        self._cross_mask()

    def _cross_mask(self) -> None:
        """Padding is hidden only when rows' lengths differ: unmasked attention is the reference's own form."""
        longest = self.cross_k[0].shape[2]
        if bool((self.cross_len == longest).all()):
            self.cross_mask = None
        else:
            filled = torch.arange(longest, device=self.device)[None] < self.cross_len[:, None]
            self.cross_mask = filled.view(-1, 1, 1, longest)

    def prefill(self, rows: slice, x: torch.Tensor) -> torch.Tensor:
        """Run the fused input x [r, T0, C] causally into cache rows; logits of the last position [r, K, card]."""
        t0 = x.shape[1]
        x = x + self.lm.transformer.positional_scale * self.pos_emb[:t0]
        for i, layer in enumerate(self.lm.transformer.layers):
            q, k, v = self._qkv(layer, layer.norm1(x))
            self.cache.k[i, rows, :, :t0] = k
            self.cache.v[i, rows, :, :t0] = v
            x = x + layer.layer_scale_1(_sdpa(layer.self_attn, q, k, v, causal=t0 > 1))
            x = self._cross_and_ff(i, layer, x, rows)
        return self._logits(x[:, -1:])

    # -------------------------------------------------------------------------------- decode

    def step(self, tokens: torch.Tensor, pos: torch.Tensor, pos_int: int | None = None) -> torch.Tensor:
        """tokens [R, K, 1] at positions pos [R] -> logits [R, K, card].

        With pos_int (every row at the same position) attention reads the cache sliced to pos_int + 1,
        exactly the shapes the reference uses. Without it, shapes are static and a mask hides the
        future: the form a CUDA graph or torch.compile can capture.
        """
        lm = self.lm
        x = sum(lm.emb[k](tokens[:, k]) for k in range(tokens.shape[1]))  # [R, 1, C]
        x = x + lm.transformer.positional_scale * self.pos_emb[pos].unsqueeze(1)
        mask = None if pos_int is not None else (self.positions[None] <= pos[:, None]).view(len(pos), 1, 1, -1)
        every_row = slice(None)
        for i, layer in enumerate(lm.transformer.layers):
            q, k, v = self._qkv(layer, layer.norm1(x))  # [R, H, 1, D] each
            keys, values = self._write(i, k, v, pos, pos_int)
            x = x + layer.layer_scale_1(_sdpa(layer.self_attn, q, keys, values, mask=mask))
            x = self._cross_and_ff(i, layer, x, every_row)
        return self._logits(x)

    def _write(self, i, k, v, pos, pos_int):
        if pos_int is not None:
            self.cache.k[i, :, :, pos_int : pos_int + 1] = k
            self.cache.v[i, :, :, pos_int : pos_int + 1] = v
            return self.cache.k[i, :, :, : pos_int + 1], self.cache.v[i, :, :, : pos_int + 1]
        index = pos.view(-1, 1, 1, 1).expand(-1, k.shape[1], 1, k.shape[3])  # [R, H, 1, D]
        self.cache.k[i].scatter_(2, index, k)
        self.cache.v[i].scatter_(2, index, v)
        return self.cache.k[i], self.cache.v[i]

    # -------------------------------------------------------------------------------- pieces

    def _qkv(self, layer, x):
        attn = layer.self_attn
        projected = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)  # [B, T, 3C]
        b, t, _ = projected.shape
        packed = projected.view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # [3, B, H, T, D]
        return packed[0], packed[1], packed[2]

    def _cross_and_ff(self, i, layer, x, rows):
        if self.has_cross:
            attn = layer.cross_attention
            dim = attn.in_proj_weight.shape[0] // 3
            bias = None if attn.in_proj_bias is None else attn.in_proj_bias[:dim]
            q = _split_heads(F.linear(layer.norm_cross(x), attn.in_proj_weight[:dim], bias), self.heads)
            mask = None if self.cross_mask is None else self.cross_mask[rows]
            out = _sdpa(attn, q, self.cross_k[i][rows], self.cross_v[i][rows], mask=mask)
            x = x + layer.layer_scale_cross(out)
        return x + layer.layer_scale_2(layer._ff_block(layer.norm2(x)))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.lm.out_norm is not None:
            x = self.lm.out_norm(x)
        return torch.stack([linear(x[:, -1]) for linear in self.lm.linears], dim=1)  # [R, K, card]

    def keep(self, rows: torch.Tensor) -> None:
        self.cache.keep(rows)
        self.cross_k = [k[rows] for k in self.cross_k]
        self.cross_v = [v[rows] for v in self.cross_v]
        if self.cross_k:
            self.cross_len = self.cross_len[rows]
            self.cross_mask = None if self.cross_mask is None else self.cross_mask[rows]
