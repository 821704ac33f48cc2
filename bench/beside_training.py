"""A text prediction's latency beside a LoRA training on its device, against alone, in one run (issue 31).

    PYTHONPATH=. .venv/bin/python -m bench.beside_training [--runs 5] [--share 0.1] [--no-append]

The engine on the tiny weights (CPU); a training of the same base with many updates runs while predictions of 2 s of
audio are made one after another; the median of each set and their ratio are reported (goal: at most 1.5). The
training's updates during the predictions show that it still moves.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.results import append

PART = "# Part 9: a prediction beside a training (`bench/beside_training.py`, issue 31)"


def _latencies(engine, runs: int) -> list[float]:
    from musicgen_local.engine import Request, result_of

    out = []
    for seed in range(1, runs + 1):
        start = time.monotonic()
        result_of(engine.submit(Request(model_version="large", prompt="piano", duration=2, seed=seed)))
        out.append(time.monotonic() - start)
    return out


def measure(runs: int, share: float, scratch: Path) -> dict:
    from musicgen_local.engine.api import Progress, TrainingRequest
    from musicgen_local.engine.local import LocalEngine
    from musicgen_local.settings import Settings
    from musicgen_local.testing.tiny import write_tiny_weights
    from musicgen_local.training.params import parse_training_input
    from tests.training_helpers import QUICK_TRAINING, songs_zip

    weights = scratch / "weights"
    write_tiny_weights(weights)
    settings = Settings(weights_dir=weights, devices="cpu", data_dir=scratch / "data", warmup="large")
    engine = LocalEngine(settings.with_(training_share=share))
    engine.wait_ready()
    try:
        _latencies(engine, 1)  # warm
        alone = _latencies(engine, runs)
        dataset = songs_zip(scratch / "songs.zip")
        params = parse_training_input({**QUICK_TRAINING, "dataset_path": str(dataset), "updates_per_epoch": 100_000})
        training = engine.train(TrainingRequest(params, str(dataset), str(scratch / "work"), str(scratch / "o.tar")))
        updates = [0]

        def follow() -> None:
            for event in training:
                if isinstance(event, Progress):
                    updates[0] = event.done

        threading.Thread(target=follow, daemon=True).start()
        while updates[0] < 3:
            time.sleep(0.05)
        before = updates[0]
        beside = _latencies(engine, runs)
        during = updates[0] - before
        training.cancel()
    finally:
        engine.close()
    return {"alone": alone, "beside": beside, "updates": during}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--share", type=float, default=0.1)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        got = measure(args.runs, args.share, Path(scratch))
    alone, beside = statistics.median(got["alone"]), statistics.median(got["beside"])
    line = (
        f"text prediction (2 s, tiny weights): alone {alone:.2f} s, beside a LoRA training {beside:.2f} s "
        f"(median of {args.runs}): ratio {beside / alone:.2f}; the training made {got['updates']} updates meanwhile "
        f"(MUSICGEN_TRAINING_SHARE={args.share})"
    )
    print(line)
    if not args.no_append:
        machine = f"{platform.machine()} CPU, {platform.system()}"
        append(PART, f"\n`python -m bench.beside_training --runs {args.runs}` on {machine}:\n\n    {line}\n")


if __name__ == "__main__":
    main()
