"""What preparing a training's dataset holds in memory and on disk, against the audio's length (issue 31, item 9).

    PYTHONPATH=. .venv/bin/python -m bench.dataset_memory [--minutes 5 30] [--channels 2]

For each length, one FLAC of a tone and noise is prepared (decoded, cut into 30 s pieces, written) in a process of its
own, which reports its peak RSS (the `musicgen_local` on PYTHONPATH is the one measured: point it at another tree to
compare); the pieces' size on disk is reported beside the float32 the audio decodes
to. Memory should not grow with the length (one piece at a time); before issue 31 it grew as twice the decoded audio.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import resource, sys, threading
from pathlib import Path
from musicgen_local.training.dataset import DatasetLimits, prepare
pieces = prepare(Path(sys.argv[1]), Path(sys.argv[2]), channels=int(sys.argv[3]), one_same_description=None,
                 auto_labeling=False, drop_vocals=False, limits=DatasetLimits(max_bytes=2**36, max_seconds=4 * 3600),
                 canceled=threading.Event(), log=lambda line: None)
print(len(pieces), sum(p.wav.stat().st_size for p in pieces), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
WRITE = """
import sys
import numpy as np, soundfile
rate, n = 32000, int(float(sys.argv[2]) * 60 * 32000)
t = np.arange(n, dtype="float32") / rate
wav = 0.2 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(0).standard_normal(n, dtype="float32")
soundfile.write(sys.argv[1], wav, rate, "PCM_16")
"""


def _run(code: str, *args: str, cwd: str) -> str:
    """`code` in a fresh interpreter, from `cwd` (so that the PYTHONPATH's tree is the one imported)."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, cwd=cwd)
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, nargs="+", default=[5, 30])
    parser.add_argument("--channels", type=int, default=2)
    args = parser.parse_args()
    print("| audio | decodes to (float32) | peak RSS of the preparing process | pieces on disk |")
    print("|---|---|---|---|")
    for minutes in args.minutes:
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "song.flac"
            _run(WRITE, str(source), str(minutes), cwd=tmp)
            done = _run(CHILD, str(source), str(Path(tmp) / "work"), str(args.channels), cwd=tmp)
            pieces, size, peak_kib = (int(x) for x in done.split())
            decoded = minutes * 60 * 32000 * args.channels * 4
            print(
                f"| {minutes:g} min, {args.channels} ch | {decoded / 2**20:.0f} MiB | {peak_kib / 1024:.0f} MiB "
                f"| {size / 2**20:.0f} MiB in {pieces} pieces |"
            )


if __name__ == "__main__":
    main()
