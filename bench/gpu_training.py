"""The GPU check's fine-tuning section: updates per second and peak memory of `large` (random weights), LoRA and
a full fine-tune, at two batch sizes, so docs/fine-tuning.md can say which card fine-tunes which model.

One update here is what the trainer's micro-batches add up to at that batch: the trainer's own forward
(training/forward.py: the delay pattern, LoRA's low-rank path, cross-entropy over the codebooks), backward,
AdamW; autocast in bfloat16 on CUDA (as the trainer runs), the text encoder frozen (a tiny one: its cost is
not what is measured).
"""

from __future__ import annotations

import time

import torch

FRAMES = 500  # 10 s pieces


def training_speed(report, scale, device: str, batches: list[int], frames: int = FRAMES, steps: int = 3) -> None:
    from bench.gpu_models import lm_for, peak_gib, reset_peak

    report.add("| kind | batch | frames | s/update | updates/s | peak memory |\n|---|---|---|---|---|---|")
    for kind in ("LoRA rank 16", "full fine-tune"):
        for batch in batches:
            lm = lm_for(scale, device)
            reset_peak(device)
            try:
                seconds = _updates(lm, kind, batch, frames, device, steps)
            except torch.OutOfMemoryError:
                report.add(f"| {kind} | {batch} | {frames} | out of memory | – | {peak_gib(device):.1f} GiB |")
            else:
                report.add(
                    f"| {kind} | {batch} | {frames} | {seconds:.2f} | {1 / seconds:.2f} | {peak_gib(device):.1f} GiB |"
                )
            finally:
                del lm
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()


def _updates(lm, kind: str, batch: int, frames: int, device: str, steps: int) -> float:
    from bench.decoder import attributes
    from musicgen_local.training import lora
    from musicgen_local.training.forward import Dropout, TrainingForward

    adapters = {}
    if kind.startswith("LoRA"):
        adapters = lora.attach(lm, 16, 32.0, torch.Generator().manual_seed(0))
        params = lora.parameters(adapters)
    else:
        lm.float()
        params = list(lm.parameters())
        for p in params:
            p.requires_grad_(True)
    forward, dropout = TrainingForward(lm, adapters), Dropout(torch.Generator(device).manual_seed(2))
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    codes = torch.randint(0, lm.card, (batch, lm.num_codebooks, frames), device=device)
    conditions = attributes(batch, False)
    cuda = device.startswith("cuda")

    def update() -> None:
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=cuda):
            loss = forward.loss(codes, lm.condition_provider(lm.condition_provider.tokenize(conditions)), dropout)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    update()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        update()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps
