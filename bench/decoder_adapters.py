"""The fast decoder with LoRA adapters in its batch: one batch of 8 requests (by default) decoded with 0, 1 and 4
adapters (rank 16 by default), frames per second and the ratio to no adapters, in one run (`bench.decoder
--adapters 0 1 4`).

With k adapters every request of the batch uses one, round-robin over k distinct adapters: the heaviest case
(no request decodes with the base alone). Each row is the best of `--adapter-repeats` rounds that decode
every count in turn; on CPU the ratio compares the process's CPU time (with `--threads 1`, the decoder's own
work, whatever else the machine runs), on CUDA wall time. Random adapter values (speed does not depend on
them; B is small so that the tokens stay finite).
"""

from __future__ import annotations

import logging
import time
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
    cpu_s: float | None  # the process's CPU time (on CPU: what the ratio compares), None on CUDA

    @property
    def fps(self) -> float:
        """Audio frames decoded per wall second, all requests together."""
        return self.batch * self.frames / self.wall_s

    @property
    def cost(self) -> float:
        """What the ratio compares: CPU seconds on CPU (a shared machine's other work does not count), else wall."""
        return self.cpu_s if self.cpu_s is not None else self.wall_s


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


def run(lm, name: str, counts: list[int], rank: int, batch: int, duration: int, device: str, mode: str, repeats=1):
    """One AdapterRow per adapter count, decoded back to back in this process with one SlotBatch (the best of
    `repeats` rounds)."""
    from bench.decoder import FRAME_RATE, MODELS, decode, fast_batch, fast_windows, timed

    frames = duration * FRAME_RATE
    melody = MODELS[name][2]
    loras = [random_lora(lm, rank, seed, device) for seed in range(max(counts, default=0))]
    slots = fast_batch(lm, batch, frames, melody, mode)
    label = f"fast/{slots.mode}"
    decode(slots, fast_windows(lm, 1, 1, melody, device))  # warm-up: allocators, T5
    best: dict[int, AdapterRow] = {}
    for _ in range(repeats):  # the counts in turn, each round: a busy machine slows them alike
        for count in counts:
            windows = fast_windows(lm, batch, frames, melody, device)
            for i, window in enumerate(windows):
                window.lora = loras[i % count] if count else None
            cpu = time.process_time()
            wall = timed(device, lambda windows=windows: decode(slots, windows))
            cpu = None if device.startswith("cuda") else time.process_time() - cpu
            row = AdapterRow(name, label, count, rank, batch, frames, wall, cpu)
            log.info("%s %s: %d adapters, %.1f frames/s", name, label, count, row.fps)
            if count not in best or row.cost < best[count].cost:
                best[count] = row
    return [best[count] for count in counts]


def table(rows: list[AdapterRow]) -> str:
    base = {(r.model, r.mode): r.cost for r in rows if r.adapters == 0}
    lines = [
        "| model | decoder | adapters | rank | batch | audio s | wall s | frames/s | CPU s | ratio to no adapters |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{base[(r.model, r.mode)] / r.cost:.2f}" if (r.model, r.mode) in base else "-"
        cpu = "-" if r.cpu_s is None else f"{r.cpu_s:.2f}"
        lines.append(
            f"| {r.model} | {r.mode} | {r.adapters} | {r.rank} | {r.batch} | {r.frames // 50} | {r.wall_s:.2f} "
            f"| {r.fps:.1f} | {cpu} | {ratio} |"
        )
    return "\n".join(lines)


def ratios(rows: list[AdapterRow]) -> str:
    """One line per adapted row: `adapters` and the ratio, for people and scripts to find."""
    base = {(r.model, r.mode): r.cost for r in rows if r.adapters == 0}
    return "\n".join(
        f"- {r.model} {r.mode} batch {r.batch}: {r.adapters} adapters (rank {r.rank}) at "
        f"{base[(r.model, r.mode)] / r.cost:.2f} of the speed with no adapters"
        for r in rows
        if r.adapters and (r.model, r.mode) in base
    )
