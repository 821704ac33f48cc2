"""A training step, ours beside Hugging Face transformers' MusicGen with `peft` LoRA, in one run.

    PYTHONPATH=. .venv/bin/python -m bench.training                       # mini and small, CPU
    PYTHONPATH=. .venv/bin/python -m bench.training --scales small --steps 3 --no-append

Both sides: random weights at audiocraft's `mini` / `small` / `medium` decoder sizes, the same batch and
sequence length, as many text positions to cross-attend to, LoRA of the same rank on the same weights
(attention q/k/v and output, the feed-forward pair, the output heads), the text encoder frozen (a one-layer
T5 of t5-base's width on both sides), AdamW.
Ours is the trainer's own step: its forward over the model's weights with LoRA's low-rank path on every
target (training/forward.py; its loss equal to cross-entropy of audiocraft's `LMModel.compute_predictions`),
residual dropout at the model's rate from a generator of its own.
transformers': `MusicgenForConditionalGeneration` with `peft.LoraConfig` as the dreamboothing recipe
sets it up, the delay pattern applied to the labels by its own `build_delay_pattern_mask`.
Reported: seconds per update and the process' peak memory after each side, and the ratio of times.
The two sides' updates alternate (ours, theirs, ours, ...); each side's median is reported, and as the ratio the
median of each neighbouring pair's ratio: on a shared machine a burst of load then slows both sides of a pair
alike instead of whichever ran during it. The same ratio of CPU time (this process', `time.process_time`) is
reported beside it: on one thread it does not count the time the process waited for a core.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.decoder import SCALES, attributes, build_lm, peak_gib, prepare_conditioning
from bench.results import append

log = logging.getLogger("bench")
PART = "# Part 7: fine-tuning (`bench/training.py`, issue 21)"
HF_TARGETS = [
    "q_proj",
    "k_proj",
    "v_proj",
    "out_proj",
    "fc1",
    "fc2",
    "lm_heads.0",
    "lm_heads.1",
    "lm_heads.2",
    "lm_heads.3",
]


def ours(scale: str, batch: int, frames: int, rank: int) -> Callable[[], None]:
    from musicgen_local.training import lora
    from musicgen_local.training.forward import Dropout, TrainingForward

    lm = build_lm(scale, "cpu", torch.float32)
    adapters = lora.attach(lm, rank, 2.0 * rank, torch.Generator().manual_seed(0))
    forward, dropout = TrainingForward(lm, adapters), Dropout(torch.Generator().manual_seed(2))
    optimizer = torch.optim.AdamW(lora.parameters(adapters), lr=1e-4)
    codes = torch.randint(0, lm.card, (batch, lm.num_codebooks, frames), generator=torch.Generator().manual_seed(1))
    conditions = attributes(batch, False)

    def step() -> None:
        tokenized = lm.condition_provider.tokenize(conditions)
        forward.loss(codes, lm.condition_provider(tokenized), dropout).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocations, kernels picked
    return step


def transformers_peft(scale: str, batch: int, frames: int, rank: int) -> Callable[[], None]:
    import peft

    from bench.decoder import hf_model

    lm = build_lm(scale, "cpu", torch.float32)
    model = hf_model(lm)
    # as many text positions to cross-attend to as ours has (its T5 tokenizes our descriptions to this length)
    text = lm.condition_provider.tokenize(attributes(batch, False))["description"]["input_ids"].shape[-1]
    del lm
    model.config.decoder.decoder_start_token_id = model.config.decoder.pad_token_id  # as the published configs
    model.train()
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=HF_TARGETS, lora_dropout=0.0)
    model = peft.get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    k = model.config.decoder.num_codebooks
    codes = torch.randint(0, 2048, (batch * k, frames), generator=torch.Generator().manual_seed(1))
    decoder = model.base_model.model.decoder
    pad = model.config.decoder.pad_token_id
    delayed, mask = decoder.build_delay_pattern_mask(codes, pad_token_id=pad, max_length=frames + k)
    labels = decoder.apply_delay_pattern_mask(delayed, mask).reshape(batch, k, -1).transpose(1, 2)
    labels = labels.masked_fill(labels == pad, -100)
    ids = torch.randint(0, 64, (batch, text), generator=torch.Generator().manual_seed(2))

    def step() -> None:
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocations, kernels picked
    return step


def alternated(steps: int, *sides: Callable[[], None]) -> tuple[list[list[float]], list[list[float]]]:
    """Each side's wall and CPU (this process') seconds per update, `steps` of each, the sides taken in turn."""
    wall: list[list[float]] = [[] for _ in sides]
    cpu: list[list[float]] = [[] for _ in sides]
    for _ in range(steps):
        for side, walls, cpus in zip(sides, wall, cpu, strict=True):
            start, start_cpu = time.perf_counter(), time.process_time()
            side()
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - start_cpu)
    return wall, cpu


def paired_ratio(ours: list[float], theirs: list[float]) -> float:
    """The median of each neighbouring pair's ratio (a pair saw about the same load)."""
    return statistics.median(t / o for o, t in zip(ours, theirs, strict=True))


def _machine() -> str:
    """The CPU by its name and cores (`platform.processor()` is empty on Linux)."""
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
    except OSError:
        names = []
    return f"{os.cpu_count()}-core {names[0] if names else platform.machine()}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", nargs="+", default=["mini", "small"], choices=["mini", "small", "medium"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0, help="audio per sequence (50 frames a second)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="timed updates per side (the median is reported)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--weights", type=Path, default=Path(".pytest_cache/bench-tiny-weights"))
    parser.add_argument("--no-append", action="store_true", help="print only; leave bench/RESULTS.md as it is")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    prepare_conditioning(args.weights)  # the one-layer T5 both sides condition with
    frames = int(args.seconds * 50)
    rows = []
    for scale in args.scales:
        if scale not in SCALES:
            raise SystemExit(f"unknown scale {scale}")
        our_step = ours(scale, args.batch, frames, args.rank)
        ours_peak = peak_gib("cpu")
        their_step = transformers_peft(scale, args.batch, frames, args.rank)
        theirs_peak = peak_gib("cpu")
        (ours_wall, theirs_wall), (ours_cpu, theirs_cpu) = alternated(args.steps, our_step, their_step)
        del our_step, their_step
        gc.collect()
        ours_s, theirs_s = statistics.median(ours_wall), statistics.median(theirs_wall)
        rows.append(
            f"| {scale} | {args.batch} x {frames} | {ours_s:.2f} s | {theirs_s:.2f} s | "
            f"**{paired_ratio(ours_wall, theirs_wall):.2f}x** | {paired_ratio(ours_cpu, theirs_cpu):.2f}x | "
            f"{ours_peak:.1f} / {theirs_peak:.1f} GiB |"
        )
        log.info(rows[-1])
    report = (
        f"\n{time.strftime('%Y-%m-%d')}, {_machine()}, "
        f"{args.threads} threads, LoRA rank {args.rank}, median of {args.steps} timed updates per side after one "
        "warm-up, the sides' updates alternating (the ratio: the median of each pair's), "
        "random weights (`python -m bench.training`). Peak memory is the process' peak RSS after each side "
        "ran (so the second figure includes the first's high-water mark).\n\n"
        "| scale | batch x frames | ours s/update | transformers + peft s/update | ours faster by | "
        "by CPU time | peak RSS ours / after theirs |\n|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    print(report)
    if not args.no_append:
        append(PART, report)


if __name__ == "__main__":
    main()
