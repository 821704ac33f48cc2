"""LoRA adapters per cache row: requests for a base model and for several fine-tunes of it in one batch.

Each row of a StaticLM may apply its own adapter (a `tuned` LoRA) or none. After each matrix
product of the base weights, the rows that have an adapter get `scale * (x @ A^T) @ B^T` added, the
way multi-LoRA servers (S-LoRA, punica) serve many adapters over one copy of the base.

Why it stays byte-exact, alone or batched: the base product is computed as it is without adapters
(rows without one are never written again), and an adapter's rows are multiplied by batched matrix
products whose batch elements are independent, one row's result whatever the others are. Batches
holding an adapter run the step eagerly (see SlotBatch.step): a captured CUDA graph fixes its
kernels and their shapes, and which rows use which adapter changes at every admission.
"""

from __future__ import annotations

import torch


class RowAdapters:
    def __init__(self, rows: int) -> None:
        self.of_row: list[str | None] = [None] * rows  # cache row -> adapter key
        self.loaded: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}  # key -> name -> (A, scale * B)

    @property
    def active(self) -> bool:
        return any(key is not None for key in self.of_row)

    def load(
        self,
        key: str,
        tensors: dict[str, tuple[torch.Tensor, torch.Tensor]],
        scale: float,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        """An adapter's tensors on the device (once; kept while any row may use it)."""
        if key not in self.loaded:
            self.loaded[key] = {
                name: (a.to(device=device, dtype=dtype), (b.float() * scale).to(device=device, dtype=dtype))
                for name, (a, b) in tensors.items()
            }

    def assign(self, rows: slice, key: str | None) -> None:
        for row in range(rows.start, rows.stop):
            self.of_row[row] = key

    def forget_unused(self) -> None:
        used = set(self.of_row)
        for key in [k for k in self.loaded if k not in used]:
            del self.loaded[key]

    def bytes(self) -> int:
        return sum(
            t.numel() * t.element_size() for pairs in self.loaded.values() for pair in pairs.values() for t in pair
        )

    def add(self, y: torch.Tensor, x: torch.Tensor, name: str, first: int, part: slice | None = None) -> None:
        """y += each adapter row's delta for weight `name`, in place; row j of x and y is cache row first + j.
        `part`: the output rows of the weight that y holds (q, k or v of a packed projection)."""
        groups: dict[str, list[int]] = {}
        for j in range(x.shape[0]):
            row = first + j
            key = self.of_row[row] if row < len(self.of_row) else None
            if key is not None:
                groups.setdefault(key, []).append(j)
        for key, rows in groups.items():
            pair = self.loaded[key].get(name)
            if pair is None:
                continue
            a, b = pair
            if part is not None:
                b = b[part]
            index = torch.tensor(rows, device=x.device)
            xs = x.index_select(0, index)
            g = xs.shape[0]
            low = torch.bmm(xs.reshape(g, -1, xs.shape[-1]), a.t().expand(g, -1, -1))  # [g, T, r]
            delta = torch.bmm(low, b.t().expand(g, -1, -1))  # [g, T, out]
            y.index_add_(0, index, delta.reshape(g, *y.shape[1:]).to(y.dtype))
