"""What the GPU check carries to the lent GPU machine is enough there.

The machine has torch and many packages (bench/device-packages.txt) but no package index: whatever else
audiocraft and the engine need travels as wheels (bench/carry.txt, made by bench/wheelhouse), and three
packages audiocraft imports but the check never uses are stood in for (bench/stand_ins). Two ways that
went wrong before a GPU minute was spent, and that these tests catch here:
- a carried wheel needs a package that neither the carry nor the machine has (soundfile -> cffi);
- a stand-in lacks a name that audiocraft imports from it (xformers.ops.memory_efficient_attention).
The full rehearsal (`bench/gpu-check --rehearse`) downloads hundreds of MB and is not part of `make test`.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from bench.gpu_check import (
    DEVICE_MARKERS,
    DEVICE_PACKAGES,
    STAND_INS,
    canonical,
    read_carry,
    read_device_packages,
    unmet_requirements,
)

ROOT = Path(__file__).resolve().parents[1]
WHEELHOUSE = ROOT / ".whl"

# Modules audiocraft names that the real package does not have either: audiocraft reaches them only with
# FAIR's internal xformers build, on its training path.
NOT_IN_THE_REAL_PACKAGE = {"xformers.checkpoint_fairinternal": "FAIR's internal xformers build only"}


# ------------------------------------------------------------------------------------------ the carry


def requires_of(name: str, version: str) -> list[str] | None:
    """The Requires-Dist lines of one carried release: from its wheel in .whl/ when bench/wheelhouse ran,
    else from this venv when it has the same version; None when neither has it (offline: no index asked)."""
    for wheel in WHEELHOUSE.glob("*.whl"):
        dist, wheel_version = wheel.name.split("-")[:2]
        if canonical(dist) == name and wheel_version == version:
            with zipfile.ZipFile(wheel) as z:
                meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
                return Parser().parsestr(z.read(meta).decode()).get_all("Requires-Dist") or []
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    return (dist.requires or []) if dist.version == version else None


@functools.cache
def carried_requirements() -> tuple[dict[str, list[str]], tuple[str, ...]]:
    """Each carried package's Requires-Dist lines, and the pins nothing here answered for."""
    requires, unanswered = {}, []
    for name, version in read_carry().pins.items():
        lines = requires_of(name, version)
        if lines is None:
            unanswered.append(f"{name}=={version}")
        else:
            requires[name] = lines
    return requires, tuple(unanswered)


def test_every_requirement_of_the_carry_is_carried_or_on_the_machine():
    carry, device = read_carry(), read_device_packages()
    assert not set(carry.pins) & set(device) - {"typing-extensions"}, "carried although the machine has it"
    have = {**device, **carry.pins, **dict.fromkeys(STAND_INS)}
    requires, unanswered = carried_requirements()
    problems = unmet_requirements(requires, have, carry)
    assert not problems, "\n".join(problems)
    if unanswered:
        pytest.skip(f"no metadata for {unanswered} here (bench/wheelhouse makes .whl/); the rest is met")


def test_the_rehearsal_installs_what_the_carry_takes_from_the_machine():
    """`bench/gpu-check --rehearse` installs the `# rehearsal` lines of bench/device-packages.txt: every
    machine package a carried one needs must be among them, or the rehearsal fails where the machine would not."""
    carry, device = read_carry(), read_device_packages()
    tagged = {
        canonical(line.split()[0].partition("==")[0])
        for line in DEVICE_PACKAGES.read_text().splitlines()
        if "# rehearsal" in line and not line.startswith("#")
    }
    requires, _ = carried_requirements()
    needed = {
        canonical(req.name)
        for lines in requires.values()
        for req in map(Requirement, lines)
        if req.marker is None or req.marker.evaluate(DEVICE_MARKERS)
    }
    untagged = sorted((needed & set(device)) - set(carry.pins) - set(carry.unused) - tagged)
    assert not untagged, f"tag these `# rehearsal` in bench/device-packages.txt: {untagged}"


def test_a_missing_requirement_is_named():
    carry = read_carry()
    have = {**read_device_packages(), **carry.pins}
    have.pop("cffi", None)
    problems = unmet_requirements({"soundfile": ["cffi >=1.0", "numpy"]}, have, carry)
    assert problems == ["soundfile needs cffi>=1.0: neither carried (bench/carry.txt) nor on the machine"]
    too_old = unmet_requirements({"pydantic": ["typing-extensions>=4.16.0"]}, {"typing-extensions": "4.12.2"}, carry)
    assert too_old == ["pydantic needs typing-extensions>=4.16.0, and typing-extensions 4.12.2 is what it would get"]
    assert unmet_requirements({"x": ["y>=2; python_version < '3.10'", "z; extra == 'dev'"]}, {}, carry) == []


def test_the_wheelhouse_reads_the_carry_list():
    script = (ROOT / "bench" / "wheelhouse").read_text()
    assert "bench/carry.txt" in script
    assert not re.search(r"[A-Za-z]==[0-9]", script), "pins belong in bench/carry.txt, not in bench/wheelhouse"


# ------------------------------------------------------------------------------------------ the stand-ins


def _names_taken(tree: ast.AST, packages: tuple[str, ...]) -> set[str]:
    """Dotted names a module takes from `packages`: `from a.b import c` gives a.b.c, `import a` then
    `a.x.y(...)` gives a.x and a.x.y. Imports inside a `try` that catches ImportError are optional: they
    and the uses of what they bind are left out."""
    taken: set[str] = set()
    aliases: dict[str, str] = {}  # local name -> the dotted module or object it stands for
    optional: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers):
            optional.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in packages:
                    aliases[alias.asname or top] = alias.name if alias.asname else top
                    taken.add(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in packages:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                taken.add(f"{node.module}.{alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                chain.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id in aliases:
                dotted = aliases[inner.id]
                for attr in reversed(chain):
                    dotted = f"{dotted}.{attr}"
                    taken.add(dotted)
    return taken


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(
        n is None or (isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError", "Exception"))
        for n in names
    )


def audiocraft_takes() -> dict[str, list[str]]:
    """Every dotted name audiocraft's installed source takes from xformers, spacy or av -> the files."""
    spec = importlib.util.find_spec("audiocraft")
    if spec is None or spec.origin is None:
        pytest.skip("audiocraft is not installed in this venv (make install)")
    where: dict[str, list[str]] = {}
    root = Path(spec.origin).parent
    for path in sorted(root.rglob("*.py")):
        for name in _names_taken(ast.parse(path.read_text(), str(path)), STAND_INS):
            where.setdefault(name, []).append(str(path.relative_to(root.parent)))
    return where


RESOLVE = """
import importlib, json, sys
missing = []
for dotted in json.load(sys.stdin):
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], 1):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        try:
            obj = importlib.import_module(".".join(parts[:i + 1]))
        except ImportError:
            missing.append(dotted)
            break
    else:
        assert "stand_ins" in (sys.modules[parts[0]].__file__ or ""), dotted
print(json.dumps(missing))
"""


def stand_ins_lack(names: list[str]) -> list[str]:
    """The names the stand-ins do not provide, resolved in a Python whose path puts bench/stand_ins first
    (this venv has the real packages)."""
    done = subprocess.run(
        [sys.executable, "-c", RESOLVE],
        input=json.dumps(names),
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "bench" / "stand_ins"), "PATH": "/usr/bin:/bin"},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_scan_sees_every_kind_of_import():
    source = """
import av
from xformers import ops
from xformers.ops import LowerTriangularMask
import spacy as sp
try:
    from xformers.profiler import profiler
except ImportError:
    pass
def f():
    ops.memory_efficient_attention(1)
    sp.cli.download("x")
    av.open("f")
"""
    assert _names_taken(ast.parse(source), STAND_INS) == {
        "av",
        "av.open",
        "xformers.ops",
        "xformers.ops.LowerTriangularMask",
        "xformers.ops.memory_efficient_attention",
        "spacy",
        "spacy.cli",
        "spacy.cli.download",
    }


def test_the_stand_ins_have_every_name_audiocraft_takes_from_them():
    takes = audiocraft_takes()
    assert "xformers.ops.memory_efficient_attention" in takes, "the scan found less than audiocraft is known to take"
    wanted = sorted(n for n in takes if not any(n == m or n.startswith(m + ".") for m in NOT_IN_THE_REAL_PACKAGE))
    lacking = stand_ins_lack(wanted)
    assert not lacking, "bench/stand_ins lacks " + "; ".join(f"{n} (taken in {', '.join(takes[n])})" for n in lacking)
