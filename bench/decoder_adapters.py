"""The fast decoder with LoRA adapters in its batch: one batch of 8 requests (by default) decoded with 0, 1 and 4
adapters (rank 16 by default), frames per second and the ratio to no adapters, in one run (`bench.decoder
--adapters 0 1 4`).

With k adapters every request of the batch uses one, round-robin over k distinct adapters: the heaviest case
(no request decodes with the base alone). Random adapter values (speed does not depend on them; B is small so
that the tokens stay finite).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger("bench")


@dataclass
class AdapterRow:
    model: str
    mode: str
    adapters: int
    rank: int
    batch: int
    frames: int  # audio frames per request
    wall_s: float

    @property
    def fps(self) -> float:
        """Audio frames decoded per second, all requests together."""
        return self.batch * self.frames / self.wall_s


def random_lora(lm, rank: int, seed: int, device: str):
    from musicgen_local.engine.fast import Lora
    from musicgen_local.training.lora import target_names

    g = torch.Generator().manual_seed(seed)
    params = dict(lm.named_parameters())
    tensors = {}
    for name in target_names(lm):
        out_features, in_features = params[name].shape
        a = torch.randn(rank, in_features, generator=g) / in_features**0.5
        b = 0.01 * torch.randn(out_features, rank, generator=g)
        tensors[name] = (a.to(device), b.to(device))
    return Lora(f"bench-adapter-{seed}", tensors, 2.0)


def run(lm, name: str, counts: list[int], rank: int, batch: int, duration: int, device: str, mode: str):
    """One AdapterRow per adapter count, decoded back to back in this process with one SlotBatch."""
    from bench.decoder import FRAME_RATE, MODELS, decode, fast_batch, fast_windows, timed

    frames = duration * FRAME_RATE
    melody = MODELS[name][2]
    loras = [random_lora(lm, rank, seed, device) for seed in range(max(counts, default=0))]
    slots = fast_batch(lm, batch, frames, melody, mode)
    label = f"fast/{slots.mode}"
    decode(slots, fast_windows(lm, 1, 1, melody, device))  # warm-up: allocators, T5
    rows = []
    for count in counts:
        windows = fast_windows(lm, batch, frames, melody, device)
        for i, window in enumerate(windows):
            window.lora = loras[i % count] if count else None
        wall = timed(device, lambda windows=windows: decode(slots, windows))
        row = AdapterRow(name, label, count, rank, batch, frames, wall)
        log.info("%s %s: %d adapters, %.1f frames/s", name, label, count, row.fps)
        rows.append(row)
    return rows


def table(rows: list[AdapterRow]) -> str:
    base = {(r.model, r.mode): r.fps for r in rows if r.adapters == 0}
    lines = [
        "| model | decoder | adapters | rank | batch | audio s | wall s | frames/s | ratio to no adapters |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r.fps / base[(r.model, r.mode)]:.2f}" if (r.model, r.mode) in base else "-"
        lines.append(
            f"| {r.model} | {r.mode} | {r.adapters} | {r.rank} | {r.batch} | {r.frames // 50} | {r.wall_s:.2f} "
            f"| {r.fps:.1f} | {ratio} |"
        )
    return "\n".join(lines)


def ratios(rows: list[AdapterRow]) -> str:
    """One line per adapted row: `adapters` and the ratio, for people and scripts to find."""
    base = {(r.model, r.mode): r.fps for r in rows if r.adapters == 0}
    return "\n".join(
        f"- {r.model} {r.mode} batch {r.batch}: {r.adapters} adapters (rank {r.rank}) at "
        f"{r.fps / base[(r.model, r.mode)]:.2f} of the speed with no adapters"
        for r in rows
        if r.adapters and (r.model, r.mode) in base
    )
