"""The GPU check's engine sections (issue 20): the memory plan against the card, the fast decoder's
self-check on the card, and faults injected for real (`bench/gpu_check.py` runs them).

- `plan_and_self_check`: an engine warms a full-size random `large` (read, build, graphs, self-check);
  the plan's figures beside what CUDA reports, then 8 concurrent 8 s requests and their peak against
  the plan, the self-check's agreement figures and its share of the warm-up, and this card's row of
  the README's table.
- `faults`: a real out-of-memory error in a step (an allocation larger than the card) must fail that
  request only; then, in a process of its own (it poisons the CUDA context), a real device-side
  assert must end the engine UNHEALTHY with its `lost` event set and the running request failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _engine(scale, device: str, weights: Path, data: str, **settings):
    from bench.gpu_models import musicgen_for
    from musicgen_local.engine.local import LocalEngine
    from musicgen_local.settings import Settings

    model = musicgen_for(scale, device)
    config = Settings(weights_dir=weights, devices=device, data_dir=Path(data), **settings)
    return LocalEngine(config, load=lambda version, dev: model)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def plan_and_self_check(report, scale, device: str, weights: Path, duration: int) -> None:
    from musicgen_local.engine import Request, result_of
    from musicgen_local.engine.memory import card_table

    cuda = device.startswith("cuda")
    if cuda:
        free, total = torch.cuda.mem_get_info()
        report.add(f"- card: {_gib(total)} in all, {_gib(free)} free before the engine")
    with tempfile.TemporaryDirectory() as data:
        engine = _engine(scale, device, weights, data, warmup="none", max_batch=8)
        try:
            start = time.monotonic()  # the first request loads the model: build, graphs, self-check, then 1 s
            result_of(engine.submit(Request(model_version="large", prompt="first", duration=1, seed=0)))
            warm_up = time.monotonic() - start
            health = engine.health()["devices"][0]
            plan, fast = health["memory"], health["fast_decoder"].get("large", "not checked")
            report.add(f"- plan: {plan['summary']}")
            model = plan["models"].get("large", {})
            weights_b, slot_b, total_b = (model.get(k, 0) for k in ("weights_bytes", "slot_bytes", "total_bytes"))
            report.add(
                f"- `large` in the plan: {model.get('slots')} slots, weights {_gib(weights_b)}, "
                f"{_gib(slot_b)} a slot, {_gib(total_b)} with workspace"
            )
            if cuda:
                report.add(
                    f"- CUDA after warm-up: {_gib(torch.cuda.memory_allocated())} allocated, "
                    f"{_gib(torch.cuda.memory_reserved())} reserved"
                )
            report.add(
                f"- first request (build, graphs, self-check, 1 s of audio): {warm_up:.1f} s; fast decoder: {fast}"
            )
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            runs = [
                engine.submit(Request(model_version="large", prompt=f"request {i}", duration=duration, seed=i))
                for i in range(8)
            ]
            threads = [threading.Thread(target=result_of, args=(run,)) for run in runs]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if cuda:
                peak = torch.cuda.max_memory_allocated()
                report.add(
                    f"- 8 concurrent {duration} s requests: peak {_gib(peak)} allocated against "
                    f"{_gib(plan['used_bytes'])} planned ({100 * peak / max(1, plan['used_bytes']):.0f}%)"
                )
                card = card_table((round(total / 1e9),))[0]
                report.add(
                    f"- the README's table for a {card['card_gb']} GB card: {card['models']} "
                    f"`stereo-melody-large` resident at 8 slots, {card['slots_alone']} slots for one, "
                    f"longest clip {card['longest_clip_s']} s"
                )
        finally:
            engine.close()


def faults(report, scale, device: str, weights: Path) -> None:
    from musicgen_local.engine import Request
    from musicgen_local.engine.api import Done, Failed
    from musicgen_local.engine.fast.model import StaticLM

    original, calls = StaticLM.step, [0]

    def step(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 5:  # more than the card holds: the allocator refuses for real
            if not device.startswith("cuda"):
                raise torch.OutOfMemoryError("CUDA out of memory (the CPU dry run's stand-in)")
            torch.empty(torch.cuda.mem_get_info()[1] * 2, dtype=torch.uint8, device=self.device)
        return original(self, *args, **kwargs)

    with tempfile.TemporaryDirectory() as data:
        engine = _engine(scale, device, weights, data, warmup="none", max_batch=2)
        try:
            list(engine.submit(Request(model_version="large", prompt="load", duration=1, seed=0)))  # loaded, checked
            StaticLM.step = step
            first = list(engine.submit(Request(model_version="large", prompt="a", duration=1, seed=1)))[-1]
            second = list(engine.submit(Request(model_version="large", prompt="b", duration=1, seed=2)))[-1]
            status = engine.health()["status"]
        finally:
            StaticLM.step = original
            engine.close()
    report.add(
        f"- out of memory in a step: the request ended {type(first).__name__}"
        f"{': ' + first.message[:160] if isinstance(first, Failed) else ''}; the next one "
        f"{type(second).__name__}; health {status}"
    )
    if not (
        isinstance(first, Failed)
        and first.message.startswith("Out of memory")
        and isinstance(second, Done)
        and status == "READY"
    ):
        raise RuntimeError("out of memory did not have the reach it should")
    fatal = subprocess.run(
        [sys.executable, "-m", "bench.gpu_engine", device, str(weights)],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in fatal.stdout.splitlines() if line.startswith("- ")]
    for line in lines:
        report.add(line)
    if fatal.returncode != 0:
        report.add(f"```\n{fatal.stderr[-2000:]}\n```")
        raise RuntimeError(f"the device-lost check exited {fatal.returncode}")


def _device_lost(device: str, weights: Path) -> int:
    """In a process of its own: a real device-side assert in a step (an index past a tensor's end, on the
    GPU), then what the engine says."""
    from bench.gpu_models import TINY
    from musicgen_local.engine import Request
    from musicgen_local.engine.api import Failed
    from musicgen_local.engine.fast.model import StaticLM

    original, calls = StaticLM.step, [0]

    def step(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] >= 5:
            if device.startswith("cuda"):
                probe = torch.zeros(4, device=self.device)
                probe[torch.tensor([1 << 20], device=self.device)].sum().item()  # device-side assert
            raise RuntimeError("CUDA error: device-side assert triggered")  # the CPU dry run's stand-in
        return original(self, *args, **kwargs)

    with tempfile.TemporaryDirectory() as data:
        engine = _engine(TINY, device, weights, data, warmup="none", max_batch=2)
        list(engine.submit(Request(model_version="large", prompt="load", duration=1, seed=0)))  # loaded, checked
        StaticLM.step = step
        last = list(engine.submit(Request(model_version="large", prompt="a", duration=1, seed=1)))[-1]
        lost = engine.lost.wait(30)
        health = engine.health()
    print(
        f"- device-side assert in a step: the request ended {type(last).__name__}"
        f"{': ' + last.message[:200] if isinstance(last, Failed) else ''}"
    )
    print(f"- then: health {health['status']}, the engine's lost event {'set' if lost else 'NOT set'}")
    return 0 if isinstance(last, Failed) and lost and health["status"] == "UNHEALTHY" else 1


if __name__ == "__main__":
    code = _device_lost(sys.argv[1], Path(sys.argv[2]))
    sys.stdout.flush()
    os._exit(code)  # a poisoned CUDA context may hang an orderly exit
