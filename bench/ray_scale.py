"""Benchmark: the engine on Ray Serve (replicas) and what one API process can front.

    PYTHONPATH=. .venv/bin/python -m bench.ray_scale                 # both parts, tiny checkpoints, CPU
    PYTHONPATH=. .venv/bin/python -m bench.ray_scale --gpu-check     # GPU box: 2 replicas on one GPU, half each

1. Replicas: for each count in --replicas, Ray Serve is started here (MUSICGEN_RAY_ADDRESS=local,
   MUSICGEN_RAY_REPLICAS=N) and --requests predictions (--duration s each, one model, different
   seeds) are submitted at once through the API's EngineClient; predictions per minute = requests /
   wall time. A first round of as many requests as the replicas take at once loads the model on
   every replica first, so what is timed is serving, not loading.
2. The API process: `musicgen-local serve`'s app with the torch-free FakeEngine, in its own process
   on 127.0.0.1 and pinned to one CPU core (this process, the load, to the others): --creates POSTs
   then --gets GETs, --concurrency at a time. Reported: requests per second and the p50/p95 latency
   of each, and how long until every created prediction had completed (each one logs ~100
   progress lines, stored in SQLite).
Prints the tables and appends them to bench/RESULTS.md (Part 5).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

from bench import results
from musicgen_local.registry import LATEST

PART = "# Part 5: the engine on Ray Serve, and one API process in front (`bench/ray_scale.py`, issue 13)"
V1 = LATEST
REPLICA = "Engine replica: "
log = logging.getLogger("bench.ray_scale")


# ------------------------------------------------------------------------------------------ replicas


def ray_engine(weights: Path, data: Path, replicas: int, max_batch: int):
    from musicgen_local.engine import load_engine
    from musicgen_local.settings import Settings

    settings = Settings(
        weights_dir=weights,
        data_dir=data,
        ray_address="local",
        ray_replicas=(replicas, replicas),
        max_batch=max_batch,
        warmup="none",
    )
    engine = load_engine(settings)
    deadline = time.monotonic() + 600
    while engine.health()["status"] != "READY":
        if time.monotonic() > deadline:
            raise RuntimeError(f"the replicas did not start: {engine.health()}")
        time.sleep(0.5)
    return engine


def serve_round(engine, model: str, count: int, duration: int, seed: int = 1) -> tuple[float, set[str]]:
    """Submit `count` requests at once, wait for all: (wall seconds, the replicas that ran them, as their
    logs name them: `<id> (<device>, pid N on <host>)`)."""
    from musicgen_local.engine.api import Done, Log, Request

    start = time.monotonic()
    runs = [
        engine.submit(Request(model_version=model, prompt=f"bench {i}", duration=duration, seed=seed + i))
        for i in range(count)
    ]
    replicas = set()
    for run in runs:
        events = list(run)
        if not isinstance(events[-1], Done):
            raise RuntimeError(f"a prediction did not succeed: {events[-1]}")
        lines = [e.line for e in events if isinstance(e, Log)]
        replicas.update(line.removeprefix(REPLICA) for line in lines if line.startswith(REPLICA))
    return time.monotonic() - start, replicas


def replica_rows(args) -> list[list[str]]:
    rows = []
    for count in args.replicas:
        with tempfile.TemporaryDirectory() as data:
            engine = ray_engine(args.weights, Path(data), count, args.max_batch)
            try:
                serve_round(engine, args.model, engine.capacity, 1, seed=10_000)  # every replica loads the model
                wall, used = serve_round(engine, args.model, args.requests, args.duration)
            finally:
                engine.close()
        rows.append(
            [
                str(count),
                str(len(used)),
                str(args.requests),
                f"{wall:.1f}",
                f"{args.requests / wall * 60:.1f}",
                f"{args.requests * args.duration / wall:.2f}",
            ]
        )
        log.info("%s", " | ".join(rows[-1]))
    return rows


def gpu_check(args) -> int:
    """Two replicas sharing one GPU (half each): both serve, on CUDA. 0 when the wiring holds."""
    with tempfile.TemporaryDirectory() as data:
        engine = ray_engine(args.weights, Path(data), 2, max_batch=1)
        try:
            # A replica takes 2 runs at once (2 x MUSICGEN_MAX_BATCH=1): 6 at once reach both.
            wall, used = serve_round(engine, args.model, 6, args.duration)
            health = engine.health()
        finally:
            engine.close()
    names = sorted(used)
    ok = len(names) == 2 and all("(cuda" in name for name in names)
    print(f"ray gpu-check: {'PASS' if ok else 'FAIL'}: 6 predictions in {wall:.1f} s on replicas {names}; {health}")
    return 0 if ok else 1


# ------------------------------------------------------------------------------------------ API process


def serve_fake(port: int, data: str) -> None:
    """The API process of part 2: the real app in front of the FakeEngine."""
    import uvicorn

    from musicgen_local.server import create_app
    from musicgen_local.settings import Settings
    from musicgen_local.testing.fake_engine import FakeEngine

    app = create_app(Settings(data_dir=Path(data)), FakeEngine(concurrency=64))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


async def load(url: str, method: str, count: int, concurrency: int, body=None, paths=None) -> tuple[float, list, list]:
    """`count` requests, `concurrency` at a time: (wall seconds, latencies, JSON bodies)."""
    gate, latencies, bodies = asyncio.Semaphore(concurrency), [], []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one(i: int) -> None:
            async with gate:
                started = time.monotonic()
                path = paths[i % len(paths)] if paths else "/v1/predictions"
                response = await client.request(method, path, json=body)
                latencies.append(time.monotonic() - started)
                response.raise_for_status()
                bodies.append(response.json())

        start = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(count)))
    return time.monotonic() - start, latencies, bodies


def api_rows(args) -> list[list[str]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.ray_scale", "--serve-fake", str(port), data],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) >= 2:  # the API process on one core, the load on the others: neither slows the other
            os.sched_setaffinity(server.pid, cores[:1])
            os.sched_setaffinity(0, cores[1:])
        try:
            _wait_up(url)
            body = {"version": V1, "input": {"prompt": "bench", "duration": 1, "model_version": "large"}}
            cpu = _cpu_seconds(server.pid)
            wall, created_lat, created = asyncio.run(load(url, "POST", args.creates, args.concurrency, body=body))
            time.sleep(2)  # the last predictions complete (the FakeEngine takes no time): their work counts too
            create_cpu = _cpu_seconds(server.pid) - cpu
            ids = [p["id"] for p in created]
            paths = [f"/v1/predictions/{pid}" for pid in random.Random(1).sample(ids, len(ids))]
            done = [_finished(url, path) for path in paths]  # GETs are timed on their own, after
            cpu = _cpu_seconds(server.pid)
            get_wall, get_lat, _ = asyncio.run(load(url, "GET", args.gets, args.concurrency, paths=paths))
            get_cpu = _cpu_seconds(server.pid) - cpu
        finally:
            os.sched_setaffinity(0, cores)
            server.terminate()
            server.wait(timeout=30)
    first = min(_time(p["created_at"]) for p in done)
    done_wall = max(_time(p["completed_at"]) for p in done) - first
    return [
        _latency_row("POST /v1/predictions (and the prediction's run)", args.creates, wall, created_lat, create_cpu),
        _latency_row("GET /v1/predictions/{id}", args.gets, get_wall, get_lat, get_cpu),
        [
            "created to succeeded, all of them",
            str(args.creates),
            f"{done_wall:.1f}",
            f"{args.creates / done_wall:.0f} completed/s",
            "",
            "",
            "",
            "",
        ],
    ]


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used, threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _finished(url: str, path: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while (prediction := httpx.get(f"{url}{path}").json())["status"] != "succeeded":
        if time.monotonic() > deadline:
            raise RuntimeError(f"not finished: {prediction}")
        time.sleep(0.1)
    return prediction


def _time(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _latency_row(what: str, count: int, wall: float, latencies: list[float], cpu: float) -> list[str]:
    cuts = statistics.quantiles(latencies, n=100)
    p50, p95, cpu_ms = cuts[49] * 1000, cuts[94] * 1000, cpu * 1000 / count
    return [
        what,
        str(count),
        f"{wall:.1f}",
        f"{count / wall:.0f}/s",
        f"{p50:.0f}",
        f"{p95:.0f}",
        f"{cpu_ms:.1f}",
        f"{1000 / cpu_ms:.0f}/s",
    ]


def _wait_up(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(f"{url}/health-check").raise_for_status()
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# ------------------------------------------------------------------------------------------ main


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", nargs="+", type=int, default=[1, 2])
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--duration", type=int, default=2)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--model", default="large")
    p.add_argument(
        "--weights",
        type=Path,
        default=Path(__file__).with_name(".weights"),
        help="a weights/ directory (default: tiny checkpoints, written on first use)",
    )
    p.add_argument("--creates", type=int, default=1000)
    p.add_argument("--gets", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--skip-replicas", action="store_true")
    p.add_argument("--skip-api", action="store_true")
    p.add_argument("--gpu-check", action="store_true", help="only check 2 replicas on one GPU (half each)")
    p.add_argument("--serve-fake", nargs=2, metavar=("PORT", "DATA"), help=argparse.SUPPRESS)
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args(argv)
    if args.serve_fake:
        return serve_fake(int(args.serve_fake[0]), args.serve_fake[1]) or 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.weights == p.get_default("weights"):
        from bench.decoder import prepare_conditioning

        prepare_conditioning(args.weights)
    args.weights = args.weights.resolve()
    if args.gpu_check:
        return gpu_check(args)
    report = (
        f"\n## {time.strftime('%Y-%m-%d %H:%M')} — {os.cpu_count()} CPU cores (load average "
        f"{os.getloadavg()[0]:.1f} at the start), {args.weights.name}\n"
    )
    if not args.skip_replicas:
        rows = replica_rows(args)
        report += (
            f"\nReplicas (CPU, MUSICGEN_MAX_BATCH={args.max_batch}), {args.requests} x {args.duration} s "
            f"`{args.model}` at once:\n\n"
            + table(["replicas", "served by", "predictions", "wall s", "predictions/min", "audio-s per wall-s"], rows)
            + "\n"
        )
    if not args.skip_api:
        rows = api_rows(args)
        header = ["request", "count", "wall s", "rate", "p50 ms", "p95 ms", "server CPU ms each", "one core's worth"]
        report += (
            f"\nOne API process (FakeEngine) on one core, load from a second process on 127.0.0.1, "
            f"{args.concurrency} requests at a time:\n\n" + table(header, rows) + "\n"
        )
    print(report)
    if not args.no_append:
        results.append(PART, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
