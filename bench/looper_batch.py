"""Four loop variations against one, on the same model and max_duration, in one run (issue 35).

    PYTHONPATH=. .venv/bin/python -m bench.looper_batch [--runs 3] [--model medium] [--no-append]

The engine on the tiny weights (CPU); the test seam gives the pipeline a click track at the requested tempo in
place of the tiny model's noise, after the model generated each row. Reported, median of `--runs`: the whole
request (generation as one batch, then beat tracking, stretch, fold and encoding per variation), and the
generation alone (the rows as raw requests submitted together), for 1 and for 4 variations, and the ratios
(goal: 4 variations at most 1.5x the time of one).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

from bench.results import append

PART = "# Part 8: the looper's seam and tempo (`bench/looper.py`, issue 35)"


def _clicks(seed, generated):
    from musicgen_local.testing import loop_signals as signals

    return signals.click_track(bpm=120.0, seconds=generated.shape[1] / 32000).audio


def measure(runs: int, model: str, scratch: Path) -> dict[str, list[float]]:
    from musicgen_local.engine.api import LoopRequest, Request, result_of
    from musicgen_local.engine.local import LocalEngine
    from musicgen_local.looper.plan import plan_loop
    from musicgen_local.settings import Settings
    from musicgen_local.testing.tiny import write_tiny_weights

    weights = scratch / "weights"
    write_tiny_weights(weights)
    settings = Settings(weights_dir=weights, devices="cpu", data_dir=scratch / "data", warmup=model)
    engine = LocalEngine(settings, loop_audio=_clicks)
    engine.wait_ready()
    seconds = math.ceil(plan_loop(120, 8, 32000).generate_seconds)
    out: dict[str, list[float]] = {}
    try:
        result_of(engine.submit(LoopRequest("drums", bpm=120, variations=1, max_duration=8, model_version=model)))
        for n in (1, 4):
            for r in range(runs):
                start = time.monotonic()
                request = LoopRequest("drums", bpm=120, variations=n, max_duration=8, model_version=model, seed=r)
                result_of(engine.submit(request))
                out.setdefault(f"loop {n}", []).append(time.monotonic() - start)
                start = time.monotonic()
                rows = [
                    engine.submit(
                        Request(model_version=model, prompt="drums, 120 bpm", duration=seconds, seed=r + i, raw=True)
                    )
                    for i in range(n)
                ]
                for row in rows:
                    result_of(row)
                out.setdefault(f"generate {n}", []).append(time.monotonic() - start)
    finally:
        engine.close()
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", default="medium")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        got = {k: statistics.median(v) for k, v in measure(args.runs, args.model, Path(scratch)).items()}
    line = (
        f"4 variations against 1 ({args.model}, tiny weights, 120 bpm, max_duration 8, median of {args.runs}): "
        f"generation {got['generate 4']:.2f} s vs {got['generate 1']:.2f} s "
        f"(ratio {got['generate 4'] / got['generate 1']:.2f}); whole request {got['loop 4']:.2f} s vs "
        f"{got['loop 1']:.2f} s (ratio {got['loop 4'] / got['loop 1']:.2f})"
    )
    print(line)
    if not args.no_append:
        machine = f"{platform.machine()} CPU, {platform.system()}"
        append(PART, f"\n`python -m bench.looper_batch --runs {args.runs}` on {machine}:\n\n    {line}\n")


if __name__ == "__main__":
    main()
