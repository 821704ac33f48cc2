"""The decode step: one fixed-shape function over every slot of a batch.

Per slot it feeds the previous column of the slot's delay-pattern sequence, runs the LM on the
slot's conditional and unconditional rows, applies classifier-free guidance and the slot's own
sampling (temperature, top-k or top-p, with Exp(1) noise drawn beforehand from the request's own
generator), masks the codebooks the delay pattern leaves empty, and writes the token where the
sequence is still unknown. Everything it reads and writes lives in `SlotState`'s preallocated
tensors, so a CUDA graph captured over it replays for any mix of requests. The captured modes never
wait on the host; an eager step with top-k slots (and no top-p) reads the largest k back to size its
`topk`, one small sync that buys skipping the full sort.

Sampling consumes the noise exactly as audiocraft's `_sample_next_token` consumes the RNG:
`torch.multinomial(probs, 1)` is `argmax(probs / Exp(1) noise)` for one sample (top-p in sorted
order, the others in vocabulary order), after a validity check that reads back to the host and that
we skip. Same seed, same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

UNKNOWN = -1  # a code not generated yet, as in the reference
PLAIN, TOP_K, TOP_P = 0, 1, 2  # sampling modes, as `_sample_next_token` chooses them


@dataclass(frozen=True)
class SamplingParams:
    temp: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    cfg_coef: float = 3.0

    @property
    def mode(self) -> int:
        return TOP_P if self.top_p > 0.0 else TOP_K if self.top_k > 0 else PLAIN


class SlotState:
    """Everything the step reads and writes, one row per slot (a request's current window)."""

    SHARED = ("special", "delays")  # the same for every slot; every other attribute has one row per slot

    def __init__(
        self,
        slots: int,
        num_codebooks: int,
        card: int,
        max_steps: int,
        delays: list[int],
        special: int,
        logits_dtype: torch.dtype,
        device: torch.device,
    ):
        def zeros(dtype=torch.long):
            return torch.zeros(slots, dtype=dtype, device=device)

        self.special = special
        self.delays = torch.tensor(delays, dtype=torch.long, device=device)  # [K]
        self.seq = torch.full((slots, num_codebooks, max_steps), special, dtype=torch.long, device=device)
        self.offset = torch.ones(slots, dtype=torch.long, device=device)  # next pattern step to sample
        self.frames, self.prefix, self.live = zeros(), zeros(), zeros()  # live: 1 while the slot decodes
        self.mode, self.top_k = zeros(), zeros()
        self.temp, self.top_p = zeros(torch.float32), zeros(torch.float32)
        self.cfg = zeros(logits_dtype)
        self.noise = torch.ones((slots, num_codebooks, card), dtype=torch.float32, device=device)

    def load(
        self, slot: int, sequence: torch.Tensor, offset: int, frames: int, prefix: int, params: SamplingParams
    ) -> None:
        """A slot's window: its pattern sequence [K, S] and where decoding starts."""
        self.seq[slot].fill_(self.special)
        self.seq[slot, :, : sequence.shape[-1]] = sequence
        for name, value in (
            ("offset", offset),
            ("frames", frames),
            ("prefix", prefix),
            ("live", 1),
            ("mode", params.mode),
            ("top_k", params.top_k),
            ("temp", params.temp),
            ("top_p", params.top_p),
            ("cfg", params.cfg_coef),
        ):
            getattr(self, name)[slot] = value

    def clear(self, slot: int) -> None:
        self.live[slot], self.offset[slot], self.frames[slot], self.prefix[slot] = 0, 1, 0, 0


def guide(logits: torch.Tensor, cfg: torch.Tensor) -> torch.Tensor:
    """[2n, K, card] rows (conditional, unconditional) per slot -> guided [n, K, card], as the reference."""
    pairs = logits.view(-1, 2, *logits.shape[1:])
    cond, uncond = pairs[:, 0], pairs[:, 1]
    return uncond + (cond - uncond) * cfg.view(-1, 1, 1)


def sample(logits: torch.Tensor, state: SlotState, n: int, modes: frozenset[int]) -> torch.Tensor:
    """Guided logits [n, K, card] -> tokens [n, K], each slot by its own mode, temperature and noise."""
    # as the reference under float16 autocast: divide in float32, round to the logits' dtype, softmax in float32
    scaled = (logits.float() / state.temp[:n].view(n, 1, 1)).to(logits.dtype)
    probs = torch.softmax(scaled.float(), dim=-1)
    noise = state.noise[:n]
    picks = {}
    if PLAIN in modes:
        picks[PLAIN] = torch.argmax(probs / noise, dim=-1)
    if TOP_P in modes:
        ranked, order = torch.sort(probs, dim=-1, descending=True)
    elif TOP_K in modes:  # the k largest are all top-k needs: cheaper than a sort (eager steps only)
        ranked = torch.topk(probs, int(state.top_k[:n].max()), dim=-1)[0]
    if TOP_K in modes:
        kth = ranked.gather(-1, (state.top_k[:n] - 1).clamp(min=0).view(n, 1, 1).expand(n, probs.shape[1], 1))
        kept = probs * (probs >= kth).float()
        kept = kept / kept.sum(dim=-1, keepdim=True)
        picks[TOP_K] = torch.argmax(kept / noise, dim=-1)
    if TOP_P in modes:
        cumulative = torch.cumsum(ranked, dim=-1)
        kept = ranked * (~(cumulative - ranked > state.top_p[:n].view(n, 1, 1))).float()
        kept = kept / kept.sum(dim=-1, keepdim=True)
        choice = torch.argmax(kept / noise, dim=-1, keepdim=True)
        picks[TOP_P] = torch.gather(order, -1, choice).squeeze(-1)
    if len(picks) == 1:
        return next(iter(picks.values()))
    mode = state.mode[:n].view(n, 1)
    tokens = picks.get(PLAIN, picks.get(TOP_K, picks.get(TOP_P)))
    for m, picked in picks.items():
        tokens = torch.where(mode == m, picked, tokens)
    return tokens


def write(state: SlotState, tokens: torch.Tensor, n: int) -> None:
    """Tokens [n, K] into column `offset` of each live slot, where the delay pattern and the prompt
    allow; then every live slot moves on one step."""
    offset = state.offset[:n]
    time = offset.view(n, 1) - 1 - state.delays.view(1, -1)  # the frame each codebook's token belongs to
    valid = (time >= 0) & (time < state.frames[:n].view(n, 1))
    tokens = torch.where(valid, tokens, state.special)
    column = offset.view(n, 1, 1).expand(n, tokens.shape[1], 1)
    current = state.seq[:n].gather(2, column).squeeze(2)  # [n, K]
    keep = (current != UNKNOWN) | (state.live[:n].view(n, 1) == 0)  # prompt codes, and slots not decoding
    state.seq[:n].scatter_(2, column, torch.where(keep, current, tokens).unsqueeze(2))
    offset.add_(state.live[:n])


def decode_step(
    lm,
    state: SlotState,
    n: int,
    length: int,
    cross_length: int,
    masked: bool,
    modes: frozenset[int],
    adapters: bool = False,
) -> None:
    """One step for slots 0..n-1 (2n LM rows), reading cache positions [0, length); `adapters`: with the
    LoRA adapters of the rows that have one."""
    offset = state.offset[:n]
    previous = (offset - 1).view(n, 1, 1).expand(n, state.seq.shape[1], 1)
    column = state.seq[:n].gather(2, previous).squeeze(2)  # [n, K]
    tokens = column.repeat_interleave(2, dim=0)  # [2n, K]: each slot's conditional, then unconditional row
    positions = (state.prefix[:n] + offset - 1).repeat_interleave(2)
    logits = lm.step(tokens, positions, length, cross_length, masked, adapters)  # [2n, K, card]
    write(state, sample(guide(logits, state.cfg[:n]), state, n, modes), n)
