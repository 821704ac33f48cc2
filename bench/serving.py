"""Benchmark: concurrent requests through the engine, as the server runs them.

    PYTHONPATH=. .venv/bin/python -m bench.serving                      # tiny checkpoints, CPU
    PYTHONPATH=. .venv/bin/python -m bench.serving --weights weights --model stereo-melody-large

N requests (different prompts and seeds) arrive together (or --stagger seconds apart) on N threads,
the server's engine threads.
Measured from request to encoded wav, so conditioning, EnCodec and ffmpeg count too: the `reference`
engine runs them one at a time (audiocraft's decoder); `fast` decodes them together
(MUSICGEN_DECODER=fast, MUSICGEN_MAX_BATCH=N). Prints a table of seconds of audio per wall second
and appends it, with the device named, to bench/RESULTS.md. Without --weights it writes and uses
the tiny real-format checkpoints (bench/.weights), whose per-step cost is all overhead.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from bench import results
from bench.decoder import device_name, prepare_conditioning

PROMPTS = ["lofi hip hop beat", "jazz trio with walking bass", "ambient pads", "rock anthem with guitars",
           "orchestral film score", "techno with a heavy kick", "acoustic folk song", "bossa nova"]
PART = "# Part 3: concurrent requests through the engine (`bench/serving.py`, issue 6)"
HEADER = ["decoder", "concurrent", "wall s", "audio-s per wall-s", "mean latency s", "batches formed"]


def run(engine, model: str, duration: int, concurrent: int, out: Path, stagger: float = 0.0) -> tuple[float, float]:
    """(wall seconds for all requests, mean seconds from arrival to file); request i arrives i x stagger s in."""
    from musicgen_local.engine import Request

    def one(i: int) -> float:
        time.sleep(i * stagger)
        start = time.monotonic()
        request = Request(model_version=model, prompt=PROMPTS[i % len(PROMPTS)], duration=duration, seed=i + 1)
        engine.generate(request, out / f"{concurrent}-{i}")
        return time.monotonic() - start

    start = time.monotonic()
    with ThreadPoolExecutor(concurrent) as pool:
        latencies = list(pool.map(one, range(concurrent)))
    return time.monotonic() - start, sum(latencies) / len(latencies)


def bench(args) -> list[list[str]]:
    from musicgen_local.engine import load_engine
    from musicgen_local.settings import Settings

    rows = []
    for decoder in args.decoders:
        for concurrent in args.concurrency:
            settings = Settings(weights_dir=args.weights.resolve(), device=args.device, decoder=decoder,
                                max_batch=concurrent)
            engine = load_engine(settings)
            with tempfile.TemporaryDirectory() as tmp:
                run(engine, args.model, 1, 1, Path(tmp))  # load the model, warm the allocator
                scheduler = engine.batching.scheduler if engine.batching else None
                formed, joined = (len(scheduler.batch_sizes), scheduler.joined) if scheduler else (0, 0)
                wall, latency = run(engine, args.model, args.duration, concurrent, Path(tmp), args.stagger)
            merged = "one at a time"
            if scheduler:
                merged = " ".join(map(str, scheduler.batch_sizes[formed:]))
                merged += f", {scheduler.joined - joined} joined" if scheduler.joined > joined else ""
            rows.append([decoder, str(concurrent), f"{wall:.2f}", f"{args.duration * concurrent / wall:.2f}",
                         f"{latency:.2f}", merged])
            logging.info("%s", " | ".join(rows[-1]))
            del engine
    return rows


def main(argv=None) -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--model", default="stereo-melody-large")
    p.add_argument("--duration", type=int, default=8)
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--stagger", type=float, default=0.0, help="seconds between arrivals (0: all at once)")
    p.add_argument("--decoders", nargs="+", default=["reference", "fast"], choices=["reference", "fast"])
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--weights", type=Path, default=Path(__file__).with_name(".weights"),
                   help="a weights/ directory (default: tiny checkpoints, written on first use)")
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.weights == p.get_default("weights"):
        prepare_conditioning(args.weights)
    rows = bench(args)
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)] + ["| " + " | ".join(r) + " |" for r in rows]
    arrival = f"{args.stagger:g} s apart" if args.stagger else "together"
    report = (f"\n## {time.strftime('%Y-%m-%d %H:%M')} — {device_name(args.device)}, {args.model} "
              f"({args.weights.name}), {args.duration} s requests, arriving {arrival}\n\n" + "\n".join(lines) + "\n")
    print(report)
    if not args.no_append:
        results.append(PART, report)


if __name__ == "__main__":
    main()
