"""LoRA adapters in fixed slots: requests for a base model and for several fine-tunes of it decode in one
batch, through the same captured step.

Each StaticLM holds `slots` adapter slots of rank `max_rank` (MUSICGEN_MAX_LORAS, MUSICGEN_MAX_LORA_RANK):
for every weight a LoRA may adapt, an A table [slots, in, rank] and a B table [slots, rank, out] (the scale
folded into B, smaller ranks zero-padded), allocated once, so that a captured step reads whatever adapters
they hold when it replays. Each cache row has its slot on the device (-1: none), written in place when a
request is admitted. After each product with a base weight, every adapted row gets `B_s (A_s x)` added,
computed from its own slot's pair with the same shapes whatever the rows hold (the way punica's and
S-LoRA's BGMV kernels serve many adapters over one copy of the base): no loop over rows, no host sync.

Why a request's audio is the same alone or batched, in any slot: a row's delta depends on its x and on its
slot's contents only. On CPU the kernel (`lora_maths.h`) fixes the order of every operation and leaves rows
without an adapter untouched; elsewhere each request's A and B are gathered (once for its two rows) and
multiplied by batched products, whose batch elements do not depend on one another, and a row without an
adapter adds an exact zero. (A masked sum over every slot would not do: where the adapter's terms fall in
the sum would change its bits.)

The slots are a cache: an adapter stays in its slot after its last request ends; when another adapter
needs a slot, the least recently used one that no live row uses is replaced; while every slot is used by
live rows, a request for another adapter waits (`can_take`). A deployment may pin its adapter (`pin`): its slot is
never replaced while the deployment keeps it, and one slot always stays unpinned, so that every other fine-tune
still gets one in turn.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...errors import UserError
from ...tuned import TARGETS


def target_names(lm) -> list[str]:
    """The LM's weights a LoRA may adapt (as the trainer attaches them): `tuned.TARGETS` in every layer that
    has them, then each codebook's output head."""
    params = dict(lm.named_parameters())
    layers = [f"transformer.layers.{i}.{t}" for i in range(len(lm.transformer.layers)) for t in TARGETS]
    heads = [f"linears.{k}.weight" for k in range(len(lm.linears))]
    return [name for name in layers + heads if name in params]


class AdapterSlots:
    """The adapter slots of one StaticLM with `rows` cache rows. `kernel`: the CPU kernel's in-place add
    (`rows_kernel.lora_add` or its compiled-step operator), None for torch's gathered products."""

    def __init__(
        self, lm, rows: int, slots: int, max_rank: int, device, dtype, kernel: Callable[..., None] | None = None
    ) -> None:
        params = dict(lm.named_parameters())
        self.shapes = {name: (params[name].shape[1], params[name].shape[0]) for name in target_names(lm)}  # in, out
        self.slots, self.max_rank, self.kernel = slots, max_rank, kernel
        self.a = {n: torch.zeros((slots, i, max_rank), dtype=dtype, device=device) for n, (i, o) in self.shapes.items()}
        self.b = {n: torch.zeros((slots, max_rank, o), dtype=dtype, device=device) for n, (i, o) in self.shapes.items()}
        self.row_slot = torch.full((rows,), -1, dtype=torch.long, device=device)  # what the kernel reads
        self.row_gather = torch.zeros(rows, dtype=torch.long, device=device)  # torch's path: slot, or 0
        self.row_on = torch.zeros(rows, dtype=dtype, device=device)  # and 1 where the row has an adapter
        self.rank = torch.zeros(slots, dtype=torch.long)  # each slot's adapter's rank (the kernel skips the padding)
        self.of_row: list[int | None] = [None] * rows  # host mirror of row_slot
        self.keys: list[str | None] = [None] * slots  # the adapter each slot holds
        self.users = [0] * slots  # live rows using each slot
        self.used_at = [0] * slots  # when each slot was last used (a tick of `_clock`)
        self.pinned: dict[str, object] = {}  # deployment -> the Lora it keeps in a slot (loaded once one is free)
        self._clock = 0
        self._refusals: dict[str, str | None] = {}

    # -------------------------------------------------------------------------------- host side

    @property
    def live(self) -> bool:
        """Whether any live row has an adapter (the host knows: it chooses the step's variant)."""
        return any(self.users)

    def any_in(self, rows: slice) -> bool:
        return any(self.of_row[r] is not None for r in range(rows.start, rows.stop))

    def resident(self) -> list[str]:
        """The adapters the slots hold, most recently used first."""
        held = [s for s in range(self.slots) if self.keys[s] is not None]
        return [self.keys[s] for s in sorted(held, key=lambda s: -self.used_at[s])]

    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for table in (self.a, self.b) for t in table.values())

    def refusal(self, lora) -> str | None:
        """Why these slots cannot hold this adapter (None: they can), for people."""
        if lora.key not in self._refusals:
            self._refusals[lora.key] = self._why_not(lora)
        return self._refusals[lora.key]

    def _why_not(self, lora) -> str | None:
        if self.slots == 0:
            return (
                "This server decodes no LoRA fine-tunes in its batches (MUSICGEN_MAX_LORAS=0): set "
                "MUSICGEN_MAX_LORAS to 1 or more, or serve with MUSICGEN_DECODER=reference."
            )
        rank = max((a.shape[0] for a, _ in lora.tensors.values()), default=0)
        if rank > self.max_rank:
            return (
                f"This fine-tune's LoRA has rank {rank}; the fast decoder's adapter slots hold rank "
                f"{self.max_rank} at most (MUSICGEN_MAX_LORA_RANK={self.max_rank}). Raise MUSICGEN_MAX_LORA_RANK "
                f"to {rank} (each slot's memory grows with it), or train with `lora_rank` {self.max_rank} or less."
            )
        for name, (a, b) in lora.tensors.items():
            if name not in self.shapes:
                return (
                    f"This fine-tune's LoRA adapts `{name}`, which this model's adapter slots do not hold (they "
                    "hold the weights musicgen_local.tuned.TARGETS names in each layer, and the output heads): "
                    "was it trained for another model?"
                )
            expected = (a.shape[0], *self.shapes[name])
            if (a.shape[0], a.shape[1], b.shape[0]) != expected or b.shape[1] != a.shape[0]:
                return (
                    f"This fine-tune's LoRA for `{name}` has A {list(a.shape)} and B {list(b.shape)}; this model "
                    f"needs A [r, {expected[1]}] and B [{expected[2]}, r]: was it trained for another model?"
                )
        return None

    def can_take(self, key: str) -> bool:
        """Whether an adapter can have a slot now: it is resident, or a slot is free of live rows and pins."""
        return key in self.keys or bool(self._free())

    def _free(self) -> list[int]:
        """Slots no live row uses and no deployment keeps."""
        kept = {lora.key for lora in self.pinned.values()}
        return [s for s in range(self.slots) if self.users[s] == 0 and self.keys[s] not in kept]

    def pin(self, name: str, lora) -> None:
        """Keep `lora` in a slot for deployment `name` (instead of what `name` kept before) until `unpin(name)`:
        loaded now if a slot is free, else as soon as one is, before any other adapter takes it. Raises UserError
        where the slots cannot hold it, or where pinning it would leave no slot for other fine-tunes."""
        why = self.refusal(lora)
        if why is not None:
            raise UserError(why)
        others = {n: p.key for n, p in self.pinned.items() if n != name and p.key != lora.key}
        if len(set(others.values())) + 1 >= self.slots:
            kept = "; ".join(f"{key} for {n}" for n, key in sorted(others.items())) or "none yet"
            raise UserError(
                f"Cannot keep the adapter of {lora.key} in one of this model's {self.slots} adapter slots "
                f"(MUSICGEN_MAX_LORAS={self.slots}): one slot always stays free for other fine-tunes, and "
                f"deployments keep the others ({kept}). Raise MUSICGEN_MAX_LORAS, or set min_instances to 0."
            )
        self.pinned[name] = lora
        self._load_pinned()

    def unpin(self, name: str) -> None:
        """The deployment keeps its adapter no more: it stays resident, replaced when least recently used."""
        self.pinned.pop(name, None)

    def pinned_keys(self) -> dict[str, str]:
        """Deployment -> the adapter it keeps (resident, or waiting for a slot)."""
        return {name: lora.key for name, lora in list(self.pinned.items())}  # health asks from another thread

    def _load_pinned(self) -> None:
        for lora in list(self.pinned.values()):
            if lora.key in self.keys:
                continue
            free = self._free()
            if not free:
                return
            self._load(self._least_recently_used(free), lora)

    def _least_recently_used(self, free: list[int]) -> int:
        return min(free, key=lambda s: (self.keys[s] is not None, self.used_at[s]))  # empty first, then LRU

    def acquire(self, lora) -> int:
        """The slot holding this adapter, loading it into the least recently used free slot if it is not
        resident. Raises UserError where the slots cannot hold it; ask `can_take` before."""
        if lora.key in self.keys:
            return self.keys.index(lora.key)
        why = self.refusal(lora)
        if why is not None:
            raise UserError(why)
        free = self._free()
        if not free:
            raise RuntimeError("every adapter slot is used by live rows or kept by a deployment: ask can_take() first")
        slot = self._least_recently_used(free)
        self._load(slot, lora)
        return slot

    def _load(self, slot: int, lora) -> None:
        self.keys[slot] = None  # a load that fails half-way leaves the slot empty, not half another adapter
        self.rank[slot] = max(a.shape[0] for a, _ in lora.tensors.values())
        for name in self.shapes:
            self.a[name][slot].zero_()
            self.b[name][slot].zero_()
        for name, (a, b) in lora.tensors.items():
            rank = a.shape[0]
            self.a[name][slot, :, :rank].copy_(a.t())  # [in, r]
            self.b[name][slot, :rank].copy_((b.float() * lora.scale).t())  # [r, out], the scale folded in
        self.keys[slot] = lora.key

    def assign(self, rows: slice, slot: int | None) -> None:
        """Cache `rows` decode with the adapter in `slot` (None: with none) from now on: whole pairs of rows (a
        request's conditional and unconditional rows), which torch's path gathers for together."""
        assert rows.start % 2 == 0 and rows.stop % 2 == 0, "adapters are assigned to whole pairs of rows"
        self._clock += 1
        for row in range(rows.start, rows.stop):
            old = self.of_row[row]
            if old is not None:
                self.users[old] -= 1
                self.used_at[old] = self._clock
            if slot is not None:
                self.users[slot] += 1
                self.used_at[slot] = self._clock
            self.of_row[row] = slot
        self.row_slot[rows] = -1 if slot is None else slot
        self.row_gather[rows] = 0 if slot is None else slot
        self.row_on[rows] = 0.0 if slot is None else 1.0
        if slot is None and self.pinned:
            self._load_pinned()  # a slot may have come free: a deployment's adapter waiting for one takes it

    # -------------------------------------------------------------------------------- the step

    def add(self, y: torch.Tensor, x: torch.Tensor, name: str, first: int, part: slice | None = None) -> torch.Tensor:
        """y plus each adapted row's delta for weight `name`; row j of x and y is cache row first + j.
        `part`: the output rows of the weight that y holds (q, k or v of a packed projection)."""
        m = x.shape[0]
        b = self.b[name] if part is None else self.b[name][:, :, part]
        if self.kernel is not None:
            rows = self.row_slot[first : first + m]
            self.kernel(y.view(-1, y.shape[-1]), x.reshape(-1, x.shape[-1]), self.a[name], b, rows, self.rank)
            return y
        # A request's two rows share its slot (see `assign`): one gather of the slot's pair for both.
        pairs = m // 2
        index, on = self.row_gather[first : first + m : 2], self.row_on[first : first + m : 2]
        xs = x.reshape(pairs, -1, x.shape[-1]).to(self.a[name].dtype)  # [pairs, 2T, in]
        low = torch.bmm(xs, self.a[name].index_select(0, index)) * on.view(pairs, 1, 1)  # [pairs, 2T, r]
        delta = torch.bmm(low, b.index_select(0, index))  # [pairs, 2T, out]
        return y + delta.view(y.shape).to(y.dtype)
