"""A training's estimated device memory (training.memory) beside what a micro-batch really takes, on the CPU.

    PYTHONPATH=. .venv/bin/python -m bench.training_memory                 # tiny and mini, LoRA and full
    PYTHONPATH=. .venv/bin/python -m bench.training_memory --scales mini --frames 250 --no-append

Each row runs in a process of its own: the trainer's forward (training.forward) on random weights at the
scale, a micro-batch of `--rows` crops of `--frames`, backward, AdamW. Measured: the bytes of every tensor the
backward keeps (counted once per storage, as autograd saves them), and the process' resident memory sampled
every millisecond through the step, above what it held before (so the allocator's own overhead is in it; glibc
is told to hand large blocks back to the system at once, so that resident memory follows what is live).
Estimated: `training.memory.activation_bytes` (kept tensors plus the backward's largest transient).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from bench.decoder import attributes, build_lm, prepare_conditioning
from bench.results import append

log = logging.getLogger("bench")
PART = "# Part 7: fine-tuning (`bench/training.py`, issue 21)"
MIB = 2**20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def measure(scale: str, kind: str, rows: int, frames: int, weights: Path) -> dict:
    """One micro-batch's kept tensors and peak resident memory above the steady state, and the estimate."""
    from musicgen_local.training import lora, memory
    from musicgen_local.training.forward import Dropout, TrainingForward

    prepare_conditioning(weights)
    lm = build_lm(scale, "cpu", torch.float32)
    rank = 16 if kind == "lora" else 0
    adapters = lora.attach(lm, rank, 2.0 * rank, torch.Generator().manual_seed(0)) if rank else {}
    params = lora.parameters(adapters) if rank else [p.requires_grad_(True) for p in lm.parameters()]
    forward, dropout = TrainingForward(lm, adapters), Dropout(torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    codes = torch.randint(0, lm.card, (rows, lm.num_codebooks, frames), generator=torch.Generator().manual_seed(2))
    tokens = lm.condition_provider.tokenize(attributes(rows, False))

    def step(kept: dict | None = None) -> None:
        def pack(t: torch.Tensor) -> torch.Tensor:
            if kept is not None:
                kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = forward.loss(codes, lm.condition_provider(tokens), dropout)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # the optimizer's moments exist from here on
    kept: dict[int, int] = {}
    step(kept)
    params_bytes = {t.untyped_storage().data_ptr() for t in lm.parameters()}
    kept_bytes = sum(n for ptr, n in kept.items() if ptr not in params_bytes)  # weights are not activations
    before, peak, running = _rss(), [0], [True]

    def sample() -> None:
        while running[0]:
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    step()
    running[0] = False
    sampler.join()
    sizes = memory.sizes_of(lm)
    estimate = memory.training_bytes(
        sizes, SimpleNamespace(lora_rank=rank, batch_size=rows), cuda=False, micro_batch=rows, frames=frames
    )
    return {"kept": kept_bytes, "peak": peak[0] - before, "estimate": estimate.activations, "total": estimate.total}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", nargs="+", default=["tiny", "mini"], choices=["tiny", "mini", "small"])
    parser.add_argument("--kinds", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--weights", type=Path, default=Path(".pytest_cache/bench-tiny-weights"))
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # scale kind: run one row, print JSON
    parser.add_argument("--no-append", action="store_true", help="print only; leave bench/RESULTS.md as it is")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.one:
        print(json.dumps(measure(*args.one, args.rows, args.frames, args.weights)))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = []
    for scale in args.scales:
        for kind in args.kinds:
            command = [sys.executable, "-m", "bench.training_memory", "--one", scale, kind]
            command += ["--rows", str(args.rows), "--frames", str(args.frames), "--weights", str(args.weights)]
            # large blocks straight from (and back to) the system: resident memory then follows what is live
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
            done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
            out = json.loads(done.stdout.splitlines()[-1])
            rows.append(
                f"| {scale} | {kind} | {args.rows} x {args.frames} | {out['estimate'] / MIB:.0f} MiB | "
                f"{out['kept'] / MIB:.0f} MiB | {out['peak'] / MIB:.0f} MiB | {out['total'] / MIB:.0f} MiB |"
            )
            log.info(rows[-1])
    report = (
        f"\n{time.strftime('%Y-%m-%d')}, the training's memory estimate on the CPU (`python -m bench.training_memory"
        f" --rows {args.rows} --frames {args.frames}`), random weights, one thread:\n\n"
        "| scale | kind | micro-batch | estimated activations | kept by the backward | peak above steady "
        "| estimated total |\n|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    print(report)
    if not args.no_append:
        append(PART, report)


if __name__ == "__main__":
    main()
