"""The GPU check: everything a lent GPU should measure, in one run of a few minutes (`bench/gpu-check`).

    bench/gpu-check                       # on the GPU machine (installs the carried .whl/ first)
    bench/gpu-check --device cpu --quick  # here: the same code at tiny sizes, to find bugs for free

    bench/gpu-check --rehearse --device cpu --quick   # here: the lent machine's Python and packages, no .venv

Random weights in the real architectures (speed does not depend on their values). Sections, each
timed and written as soon as it is done (a section that fails is reported and the next one runs;
memory is freed between sections):
0. the environment: Python, torch, the carried packages, and any requirement of theirs that is unmet;
1. fast vs reference token agreement (CUDA float16, `large`), and batched == alone on the device;
   then the engine's readiness checks (`bench/gpu_engine.py`): the memory plan against the card and
   CUDA's own figures, the fast path's self-check, and faults injected for real (out of memory in a step;
   a device-side assert, in a process of its own);
2. the captured-graph step (eager on CPU), ms/step;
3. ms/step for `large`, 8 s and 30 s, batch 1, 8 and 64, beside audiocraft's eager loop and
   transformers' MusicGen (batch 1, 8 s), with the peak memory of each row; then fine-tuning's speed, and
   a batch of 8 decoding with 0, 1 and 4 LoRA adapters, eager against captured steps (`bench/gpu_adapters.py`);
4. the peer to beat, fast-musicgen 0.1.0 (CUDA graphs, batch 1) at the same size;
5. request -> file for an 8 s clip through the engine (full-size random `large` and EnCodec),
   time to the first streamed segment and the stream's speed against real time;
6. EnCodec decode (8 s, 30 s), MultiBand Diffusion (8 s), htdemucs (30 s);
7. two Ray Serve replicas sharing the GPU, half each (when ray is installed there);
8. the torch.compile step, last (its compile can take minutes: nothing else waits on it; --no-compile skips it).
The report goes to bench/RESULTS.md (Part 1) and, with --out, to a file there. The exit status is 1
when any section failed.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import gpu_adapters, gpu_engine, gpu_training, results
from bench.decoder import autocast, timed
from bench.gpu_models import (
    LARGE,
    TINY,
    conditions_for,
    encodec_for,
    lm_for,
    musicgen_for,
    peak_gib,
    reset_peak,
    windows_for,
)

log = logging.getLogger("gpu-check")
ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / "bench" / "carry.txt"  # what .whl/ holds (bench/wheelhouse)
DEVICE_PACKAGES = ROOT / "bench" / "device-packages.txt"  # what the lent machine has
STAND_INS = ("xformers", "spacy", "av")  # bench/stand_ins: imported by audiocraft, unused on this path


class Report:
    def __init__(self, device: str, out: Path | None, budget_s: float) -> None:
        self.device, self.out, self.lines = device, out, []
        self.failed: list[str] = []
        self.passed: list[str] = []
        self.skipped: list[str] = []
        self.deadline = time.monotonic() + budget_s  # past it, the remaining sections are skipped

    def add(self, line: str = "") -> None:
        log.info("%s", line)
        self.lines.append(line)
        if self.out is not None:
            self.out.write_text("\n".join(self.lines) + "\n")

    def summary(self) -> str:
        return "; ".join(
            f"{label} {len(titles)}" + (f" ({', '.join(titles)})" if titles and label != "passed" else "")
            for label, titles in (
                ("passed", self.passed),
                ("FAILED", self.failed),
                ("skipped for the time budget", self.skipped),
            )
        )

    def section(self, title: str, fn, *args) -> None:
        self.add(f"\n### {title}\n")
        start = time.monotonic()
        if start > self.deadline:
            self.add("skipped: the run's time budget (--budget-s) is spent")
            self.skipped.append(title)
            return
        try:
            fn(self, *args)
            self.passed.append(title)
        except Exception as exc:  # noqa: BLE001 - one failing section must not cost the others their minutes
            self.add(f"FAILED: {type(exc).__name__}: {exc}")
            self.failed.append(title)
            log.error("%s", traceback.format_exc())
        held = free_memory(self.device)
        self.add(f"\n({time.monotonic() - start:.0f} s{held})")


def free_memory(device: str) -> str:
    """Drop what a section left behind (transformers' model cache, collectable cycles, the CUDA caching
    allocator's free blocks); says how much the device still holds."""
    from bench import decoder

    decoder._HF.clear()
    gc.collect()
    if not device.startswith("cuda"):
        return ""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return f"; {torch.cuda.memory_allocated() / 2**30:.2f} GiB still allocated after it"


# ------------------------------------------------------------------------------------------ what is carried

# The lent machine's interpreter, for the environment markers of the carried packages' requirements.
DEVICE_MARKERS = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Carry:
    """bench/carry.txt: the pins, which are built here from source, and the declared exceptions."""

    pins: dict[str, str]  # canonical name -> version
    built: set[str]
    unused: dict[str, str]  # requirement nobody on this path imports -> why
    names_only: set[str]  # carried packages whose own version pins are not checked


def read_carry(path: Path = CARRY) -> Carry:
    carry = Carry({}, set(), {}, set())
    for line in path.read_text().splitlines():
        body, _, comment = line.partition("#")
        directive = re.match(r"\s*(unused|names-only):\s*(\S+)\s*(.*)", comment) if not body.strip() else None
        if directive:
            kind, name, why = directive.groups()
            if kind == "unused":
                carry.unused[canonical(name)] = why
            else:
                carry.names_only.add(canonical(name))
        elif body.strip():
            name, version = body.strip().split("==")
            carry.pins[canonical(name)] = version
            if comment.strip().startswith("build"):
                carry.built.add(canonical(name))
    return carry


def read_device_packages(path: Path = DEVICE_PACKAGES) -> dict[str, str | None]:
    """The lent machine's packages: canonical name -> version, None where the device notes give none."""
    have: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        body = line.partition("#")[0].strip()
        if body:
            name, _, version = body.partition("==")
            have[canonical(name)] = version or None
    return have


def unmet_requirements(
    requires: dict[str, list[str]],
    have: dict[str, str | None],
    carry: Carry,
    absent: str = "neither carried (bench/carry.txt) nor on the machine",
) -> list[str]:
    """Each requirement of a carried package (`requires`: its Requires-Dist lines) that `have` (name ->
    version, None for unknown) does not meet, evaluated for the lent machine's Python. An unknown
    version passes here; on the machine itself every installed version is known."""
    from packaging.requirements import Requirement

    problems = []
    for dist, lines in sorted(requires.items()):
        for line in lines:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(DEVICE_MARKERS):
                continue
            name = canonical(req.name)
            if name in carry.unused:
                continue
            if name not in have:
                problems.append(f"{dist} needs {req}: {absent}")
            elif (
                have[name] is not None
                and canonical(dist) not in carry.names_only
                and not req.specifier.contains(have[name], prereleases=True)
            ):
                problems.append(f"{dist} needs {req}, and {req.name} {have[name]} is what it would get")
    return problems


def environment(report: Report) -> None:
    """What this run imports: the interpreter, torch, the stand-ins, and any requirement of a carried package
    that what is installed here does not meet. Where bench/gpu-check installed the carry (GPU_CHECK_SITE: on
    the lent machine, and in --rehearse) that fails the section; in .venv, where the carry is not what runs,
    the differences are only noted (tests/test_gpu_carry.py and --rehearse check the carry)."""
    carried = os.environ.get("GPU_CHECK_SITE")
    report.add(
        f"- Python {platform.python_version()} ({sys.executable}), torch {torch.__version__}; "
        + (f"the carry installed in {carried}" if carried else "no carry installed (this venv's own packages)")
    )
    carry = read_carry()
    requires, have, missing = {}, {}, []
    for dist in importlib.metadata.distributions():  # in sys.path order: the first of a name is the one imported
        have.setdefault(canonical(dist.metadata["Name"]), dist.version)
    have.update({name: None for name in STAND_INS if importlib.util.find_spec(name) is not None})
    for name, pin in carry.pins.items():
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(f"{name}=={pin}")
            continue
        requires[name] = dist.requires or []
        if dist.version != pin:
            report.add(f"- note: {name} {dist.version} here, {pin} carried")
    for name in STAND_INS:
        spec = importlib.util.find_spec(name)
        where = "missing" if spec is None else "stand-in" if "stand_ins" in str(spec.origin) else "real"
        report.add(f"- {name}: {where}")
    problems = [f"not installed: {', '.join(missing)}"] if missing else []
    problems += unmet_requirements(requires, have, carry, absent="not installed here")
    for problem in problems:
        report.add(f"- {problem}" if carried else f"- note: {problem}")
    if problems and carried:
        raise RuntimeError(f"{len(problems)} unmet requirement(s) of the carried packages (listed above)")
    if not problems:
        report.add(f"- the {len(carry.pins)} carried packages are installed and their requirements are met")


def tiny_t5(report: Report, weights: Path) -> None:
    from musicgen_local.testing.tiny import write_tiny_weights

    write_tiny_weights(weights, ["t5"])  # the text conditioner's files (tiny: its cost is not what we measure)
    report.add(f"- written to {weights}")


# ------------------------------------------------------------------------------------------ models


def fast_decode(lm, slots: int, frames: int, windows: list, device: str, mode: str = "auto"):
    """(codes per window, seconds) with a SlotBatch whose graphs are captured before the clock starts."""
    from musicgen_local.engine.fast import SlotBatch, decode

    with torch.inference_mode(), autocast(device):
        batch = SlotBatch(lm, slots, frames, mode=mode)
        batch.warm_up()
        out: list = []
        seconds = timed(device, lambda: out.extend(decode(batch, windows)))
    return out, seconds


# ------------------------------------------------------------------------------------------ sections


def agreement(report: Report, scale, device: str, frames: int) -> None:
    """Same seed: the fast decoder (one slot: audiocraft's shapes) against audiocraft's generate."""
    lm = lm_for(scale, device)
    with torch.inference_mode(), autocast(device):
        text = "lofi hip hop beat with warm piano chords"
        torch.manual_seed(7)
        reference = lm.generate(None, _attributes(text), max_gen_len=frames, use_sampling=True, top_k=250)
        conditions = conditions_for(lm, text)
    ours, _ = fast_decode(lm, 1, frames, [_window(lm, conditions, frames, device, 7)], device)
    same = (ours[0] == reference).float().mean().item()
    first = _first_difference(ours[0], reference)
    report.add(
        f"- fast (1 slot) vs audiocraft, {frames} frames, seed 7: {same:.1%} of tokens equal; "
        f"first difference at frame {first}"
    )
    alone, _ = fast_decode(lm, 8, frames, windows_for(lm, 1, frames, device, seed=3), device)
    batched, _ = fast_decode(lm, 8, frames, windows_for(lm, 8, frames, device, seed=3), device)
    report.add(
        f"- batched == alone on this device (8 slots, request 0 alone vs beside 7 others): "
        f"{torch.equal(alone[0], batched[0])} ({(alone[0] == batched[0]).float().mean().item():.1%} equal)"
    )


def _attributes(text: str) -> list:
    from audiocraft.modules.conditioners import ConditioningAttributes

    return [ConditioningAttributes(text={"description": text})]


def _window(lm, conditions: dict, frames: int, device: str, seed: int):
    from musicgen_local.engine.fast import SamplingParams, Window

    return Window(conditions, None, frames, SamplingParams(), torch.Generator(device).manual_seed(seed))


def _first_difference(a: torch.Tensor, b: torch.Tensor) -> str:
    diff = (a != b).any(dim=1)[0].nonzero()
    return "none" if len(diff) == 0 else str(int(diff[0]))


def step_modes(report: Report, scale, device: str, frames: int, modes: list[str]) -> None:
    lm = lm_for(scale, device)
    for mode in modes:
        start = time.monotonic()
        _, seconds = fast_decode(lm, 1, frames, windows_for(lm, 1, frames, device), device, mode)
        report.add(
            f"- {mode}: {1000 * seconds / (frames + 3):.2f} ms/step (batch 1, {frames} frames; "
            f"capture and compile took {time.monotonic() - start - seconds:.0f} s)"
        )


def step_speed(report: Report, scale, device: str, durations: list[int], batches: list[int]) -> None:
    lm = lm_for(scale, device)
    report.add("| decoder | audio s | batch | ms/step | audio-s per wall-s | peak GiB |")
    report.add("|---|---|---|---|---|---|")
    for duration in durations:
        frames = duration * 50
        for batch in batches:
            reset_peak(device)
            _, seconds = fast_decode(lm, batch, frames, windows_for(lm, batch, frames, device), device)
            report.add(
                f"| fast | {duration} | {batch} | {1000 * seconds / (frames + 3):.2f} | "
                f"{duration * batch / seconds:.1f} | {peak_gib(device):.1f} |"
            )
    frames = durations[0] * 50
    reset_peak(device)
    with torch.inference_mode(), autocast(device):
        seconds = timed(
            device, lambda: lm.generate(None, _attributes("lofi"), max_gen_len=frames, use_sampling=True, top_k=250)
        )
    report.add(
        f"| audiocraft eager | {durations[0]} | 1 | {1000 * seconds / (frames + 3):.2f} | "
        f"{durations[0] / seconds:.1f} | {peak_gib(device):.1f} |"
    )
    from bench.decoder import _hf_generate

    _hf_generate(lm, 1, 8)  # build and warm it
    reset_peak(device)
    seconds = timed(device, lambda: _hf_generate(lm, 1, frames + 3))
    report.add(
        f"| transformers | {durations[0]} | 1 | {1000 * seconds / (frames + 3):.2f} | "
        f"{durations[0] / seconds:.1f} | {peak_gib(device):.1f} |"
    )


def fast_musicgen_peer(report: Report, scale, device: str, frames: int) -> None:
    """fast-musicgen in a process of its own (it sets torch's default device for the whole process)."""
    if not device.startswith("cuda"):
        report.add("- skipped: fast-musicgen needs CUDA")
        return
    code = f"import bench.gpu_peer as p; p.main({list(scale)!r}, {frames})"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT, check=False
    )
    report.add(
        done.stdout.strip().splitlines()[-1]
        if done.returncode == 0 and done.stdout.strip()
        else f"- FAILED ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}"
    )


def request_to_file(report: Report, scale, device: str, duration: int, weights: Path) -> None:
    """Through the engine, as the server uses it: submit -> Started -> first segment -> Done."""
    from musicgen_local.engine import Request
    from musicgen_local.engine.api import Audio, Done, Failed, Started
    from musicgen_local.engine.local import LocalEngine
    from musicgen_local.settings import Settings

    model = musicgen_for(scale, device)
    with tempfile.TemporaryDirectory() as data:
        settings = Settings(weights_dir=weights, devices=device, warmup="none", data_dir=Path(data), max_batch=8)
        engine = LocalEngine(settings, load=lambda version, dev: model)
        try:
            for attempt in ("first (loads, captures graphs)", "second"):
                start, marks = time.perf_counter(), {}
                for event in engine.submit(
                    Request(model_version="large", prompt="lofi", duration=duration, seed=1), stream=True
                ):
                    kind = type(event).__name__
                    if isinstance(event, Started | Audio | Done) and kind not in marks:
                        marks[kind] = time.perf_counter() - start
                    if isinstance(event, Audio):
                        marks["last segment"] = time.perf_counter() - start
                    if isinstance(event, Failed):
                        raise RuntimeError(event.message)
                stream = duration / (marks["last segment"] - marks["Audio"] + 1e-9) if "Audio" in marks else 0
                report.add(
                    f"- {attempt} {duration} s request: "
                    + ", ".join(f"{'first segment' if k == 'Audio' else k} at {v:.2f} s" for k, v in marks.items())
                    + f"; the stream ran {stream:.1f}x real time after its first segment"
                )
        finally:
            engine.close()


def codecs(report: Report, device: str, seconds: list[int], mbd_seconds: float, demucs_seconds: float) -> None:
    from bench.mbd_demucs import time_htdemucs, time_mbd

    codec = encodec_for(device)
    with torch.inference_mode():
        for s in seconds:
            codes = torch.randint(0, 2048, (1, 4, s * 50), device=device)
            codec.decode(codes, None)
            report.add(f"- EnCodec decode, {s} s: {timed(device, lambda c=codes: codec.decode(c, None)):.3f} s")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    report.add(f"- MBD decode (4 bands x 20 steps), {mbd_seconds:g} s: {time_mbd(device, dtype, mbd_seconds):.2f} s")
    report.add(f"- htdemucs, {demucs_seconds:g} s stereo: {time_htdemucs(device, demucs_seconds):.2f} s")


def ray_wiring(report: Report, device: str) -> None:
    """Two Ray Serve replicas sharing the one GPU, half each (bench/ray_scale.py --gpu-check)."""
    import importlib.util

    if not device.startswith("cuda"):
        report.add("- skipped: needs CUDA (on CPU the Ray tests in tests/ray cover the wiring)")
        return
    if importlib.util.find_spec("ray") is None:
        report.add("- skipped: ray is not installed there (its wheel is larger than what a device run may carry)")
        return
    done = subprocess.run(
        [sys.executable, "-m", "bench.ray_scale", "--gpu-check"],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=ROOT,
        check=False,
    )
    report.add(f"- exit {done.returncode}: " + " / ".join(done.stdout.strip().splitlines()[-3:]))


# ------------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes and short clips: a dry run of every section")
    p.add_argument("--out", type=Path, help="also write the report into this folder")
    p.add_argument(
        "--budget-s",
        type=float,
        help="start no section after this many seconds (default: 420 on CUDA, "
        "to fit a 10-minute device call; none on the CPU, where a dry run should run every section)",
    )
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile section (the last one)")
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    weights = Path(tempfile.mkdtemp(prefix="gpu-check-weights-"))
    scale = TINY if args.quick else LARGE
    cuda = args.device.startswith("cuda")
    name = torch.cuda.get_device_name() if cuda else "CPU (dry run)"
    out = None
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        out = args.out / "gpu-check.md"
    budget = args.budget_s if args.budget_s is not None else 420 if cuda else float("inf")
    report = Report(args.device, out, budget)
    report.add(
        f"\n## {time.strftime('%Y-%m-%d %H:%M')} — GPU check on {name}, torch {torch.__version__}"
        f"{' (quick: tiny sizes)' if args.quick else ''}"
    )
    frames = 100 if args.quick else 400
    durations, batches = ([1, 2], [1, 2]) if args.quick else ([8, 30], [1, 8, 64])
    report.section("Environment", environment)
    report.section("Setup: the text conditioner's tiny T5", tiny_t5, weights)
    report.section("Token agreement", agreement, scale, args.device, frames)
    report.section(
        "Memory plan and the fast path's self-check through the engine",
        gpu_engine.plan_and_self_check,
        scale,
        args.device,
        weights,
        2 if args.quick else 8,
    )
    report.section(
        "Faults injected for real: out of memory, a device-side assert", gpu_engine.faults, scale, args.device, weights
    )
    report.section(
        "Graph step" if cuda else "Eager step", step_modes, scale, args.device, frames, ["graph"] if cuda else ["eager"]
    )
    report.section("Decode speed (large, random weights)", step_speed, scale, args.device, durations, batches)
    report.section(
        "Fine-tuning (large, random weights): LoRA and full, updates/s and peak memory",
        gpu_training.training_speed,
        scale,
        args.device,
        [1, 2] if args.quick else [4, 8],
        50 if args.quick else 500,
    )
    report.section(
        "LoRA adapters in the batch (large, random weights): 0, 1 and 4 adapters, eager against captured steps",
        gpu_adapters.adapter_speed,
        scale,
        args.device,
        frames,
    )
    report.section("fast-musicgen 0.1.0, batch 1", fast_musicgen_peer, scale, args.device, frames)
    report.section(
        "Request to file through the engine", request_to_file, scale, args.device, 2 if args.quick else 8, weights
    )
    report.section(
        "Codecs",
        codecs,
        args.device,
        [1, 2] if args.quick else [8, 30],
        0.05 if args.quick else 8.0,
        0.25 if args.quick else 30.0,
    )
    report.section("Scale-out wiring: two Ray replicas on one GPU", ray_wiring, args.device)
    if not args.no_compile:  # last: a slow or failing compile costs no other section anything
        report.section("torch.compile step", step_modes, scale, args.device, frames, ["compile"])
    report.add(f"\nSections: {report.summary()}")
    text = "\n".join(report.lines) + "\n"
    print(text)
    if not args.no_append:
        results.append("# Part 1", text)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
