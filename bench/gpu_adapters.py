"""The GPU check's adapters section: a batch of 8 `large` requests (random weights) decoded with 0, 1 and 4 LoRA
adapters of rank 16 (every request adapted, round-robin over the adapters, as `bench.decoder --adapters`), frames
per second and the ratio to no adapters, for each step mode: `eager` (how any batch holding an adapter row
stepped before the adapter slots; its products are now the slots' gathered ones, so it bounds the old path from
above) against `graph` (the captured steps, the adapters' variant replayed; `graph` resolves to eager on CPU).
"""

from __future__ import annotations

import torch

COUNTS = (0, 1, 4)
ROUNDS = 2  # each count's best


def adapter_speed(report, scale, device: str, frames: int, batch: int = 8, rank: int = 16) -> None:
    from bench.decoder import autocast, timed
    from bench.decoder_adapters import random_lora
    from bench.gpu_models import lm_for, peak_gib, reset_peak, windows_for
    from musicgen_local.engine.fast import SlotBatch, decode

    lm = lm_for(scale, device)
    loras = [random_lora(lm, rank, seed, device) for seed in range(max(COUNTS))]
    report.add("| step | adapters | rank | batch | frames | ms/step | frames/s | ratio to no adapters | peak GiB |")
    report.add("|---|---|---|---|---|---|---|---|---|")
    for mode in ("eager", "graph"):
        reset_peak(device)
        with torch.inference_mode(), autocast(device):
            slots = SlotBatch(lm, batch, frames, mode=mode)
            slots.warm_up()
            best = dict.fromkeys(COUNTS, float("inf"))
            for _ in range(ROUNDS):  # the first round also warms up (allocator, first use of each shape)
                for count in COUNTS:
                    windows = windows_for(lm, batch, frames, device)
                    for i, window in enumerate(windows):
                        window.lora = loras[i % count] if count else None
                    seconds = timed(device, lambda slots=slots, windows=windows: decode(slots, windows))
                    best[count] = min(best[count], seconds)
        for count in COUNTS:
            fps = batch * frames / best[count]
            report.add(
                f"| {slots.mode} | {count} | {rank} | {batch} | {frames} | {1000 * best[count] / (frames + 3):.2f} "
                f"| {fps:.1f} | {best[0] / best[count]:.2f} | {peak_gib(device):.1f} |"
            )
        del slots
