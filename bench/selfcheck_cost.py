"""What the fast decoder's self-check costs, against the warm-up it is part of.

    PYTHONPATH=. .venv/bin/python -m bench.selfcheck_cost --scales mini small --threads 1

For each scale, a `large` checkpoint in the real format with random weights at bench.decoder's size
(EnCodec 32 kHz's real architecture as codec, the tiny T5) is written once under bench/, then an
engine warms it up (read, build, graphs on CUDA, self-check) as `MUSICGEN_WARMUP=large` does. Prints
the warm-up's wall time, the check's own time (from /health-check's `fast_decoder` line) and the
fraction, and appends them to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path

import torch

from bench import results
from bench.streaming import write_mini

HERE = Path(__file__).resolve().parent
PART = "# Part 6: the memory plan and the self-check"


def measure(scale: str, device: str) -> list[str]:
    from musicgen_local.engine.local import LocalEngine
    from musicgen_local.settings import Settings

    weights = write_mini(HERE / f".weights-{scale}", scale)
    start = time.monotonic()
    engine = LocalEngine(Settings(weights_dir=weights, devices=device, warmup="large", data_dir=HERE / ".data"))
    engine.wait_ready()
    warm_up = time.monotonic() - start
    status = engine.health()["devices"][0]["fast_decoder"]["large"]
    engine.close()
    check = float(re.search(r"checked in ([0-9.]+) s", status)[1])
    return [scale, device, f"{warm_up:.2f}", f"{check:.2f}", f"{100 * check / warm_up:.1f}%", status.split(" (")[0]]


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scales", nargs="+", default=["mini", "small"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    header = ["scale", "device", "warm-up s", "self-check s", "share", "fast decoder"]
    rows = [measure(scale, args.device) for scale in args.scales]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    report = (
        f"\n## Self-check cost on {_device_name(args.device)} ({time.strftime('%Y-%m-%d')})\n\n"
        f"`PYTHONPATH=. .venv/bin/python -m bench.selfcheck_cost {' '.join(argv or [])}`\n\n" + "\n".join(lines)
    )
    print(report)
    if not args.no_append:
        results.append(PART, report)


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return "CPU"


if __name__ == "__main__":
    main()
