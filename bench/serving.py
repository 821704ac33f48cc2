"""Benchmark: concurrent requests through the engine, as the server runs them.

    PYTHONPATH=. .venv/bin/python -m bench.serving                      # tiny checkpoints, CPU
    PYTHONPATH=. .venv/bin/python -m bench.serving --weights weights --model stereo-melody-large

N requests (different prompts and seeds) are submitted together (or --stagger seconds apart), as the
server submits them, and followed to their files. Measured from submission to encoded file, so
input preparation, conditioning, EnCodec and ffmpeg count too: the `reference` engine decodes them
one at a time (audiocraft's decoder); `fast` decodes them together on the device loop
(MUSICGEN_MAX_BATCH=N). Prints a table of seconds of audio per wall second and the largest batch
the requests reported, and appends it, with the device named, to bench/RESULTS.md. Without --weights
it writes and uses the tiny real-format checkpoints (bench/.weights), whose per-step cost is all
overhead.
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

PROMPTS = [
    "lofi hip hop beat",
    "jazz trio with walking bass",
    "ambient pads",
    "rock anthem with guitars",
    "orchestral film score",
    "techno with a heavy kick",
    "acoustic folk song",
    "bossa nova",
]
PART = "# Part 3: concurrent requests through the engine (`bench/serving.py`, issue 6)"
HEADER = ["decoder", "concurrent", "wall s", "audio-s per wall-s", "mean latency s", "largest batch reported"]


def run(engine, model: str, duration: int, concurrent: int, stagger: float = 0.0) -> tuple[float, float, int]:
    """(wall seconds for all requests, mean seconds from submission to file, largest batch reported);
    request i is submitted i x stagger s in."""
    from musicgen_local.engine import Request
    from musicgen_local.engine.api import Done, Log

    def one(i: int) -> tuple[float, int]:
        time.sleep(i * stagger)
        start = time.monotonic()
        request = Request(model_version=model, prompt=PROMPTS[i % len(PROMPTS)], duration=duration, seed=i + 1)
        events = list(engine.submit(request))
        assert isinstance(events[-1], Done), events[-1]
        sizes = [int(e.line.split()[5]) for e in events if isinstance(e, Log) and e.line.startswith("Decoding in a")]
        return time.monotonic() - start, max(sizes, default=1)

    start = time.monotonic()
    with ThreadPoolExecutor(concurrent) as pool:
        outcomes = list(pool.map(one, range(concurrent)))
    return time.monotonic() - start, sum(t for t, _ in outcomes) / concurrent, max(b for _, b in outcomes)


def bench(args) -> list[list[str]]:
    from musicgen_local.engine import load_engine
    from musicgen_local.settings import Settings

    rows = []
    for decoder in args.decoders:
        for concurrent in args.concurrency:
            with tempfile.TemporaryDirectory() as data:
                settings = Settings(
                    weights_dir=args.weights.resolve(),
                    devices=args.device,
                    decoder=decoder,
                    max_batch=concurrent,
                    warmup=args.model,
                    data_dir=Path(data),
                )
                engine = load_engine(settings)
                engine.wait_ready()
                run(engine, args.model, 1, 1)  # warm the allocator and the conditioners
                wall, latency, batch = run(engine, args.model, args.duration, concurrent, args.stagger)
                engine.close()
            merged = "one at a time" if decoder == "reference" else str(batch)
            rows.append(
                [
                    decoder,
                    str(concurrent),
                    f"{wall:.2f}",
                    f"{args.duration * concurrent / wall:.2f}",
                    f"{latency:.2f}",
                    merged,
                ]
            )
            logging.info("%s", " | ".join(rows[-1]))
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
    p.add_argument(
        "--weights",
        type=Path,
        default=Path(__file__).with_name(".weights"),
        help="a weights/ directory (default: tiny checkpoints, written on first use)",
    )
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
    report = (
        f"\n## {time.strftime('%Y-%m-%d %H:%M')} — {device_name(args.device)}, {args.model} "
        f"({args.weights.name}), {args.duration} s requests, arriving {arrival}\n\n" + "\n".join(lines) + "\n"
    )
    print(report)
    if not args.no_append:
        results.append(PART, report)


if __name__ == "__main__":
    main()
