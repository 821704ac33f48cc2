"""Shared fixtures: tiny real-format weights (written once, cached by the writer's source hash)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

# Tiny models are all per-op overhead: one thread is several times faster than two, and on a
# shared 2-core machine threads fight. Subprocesses (CLI, Cog server) inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
# librosa's numba kernels are compiled at first use into an on-disk cache; two workers writing that cache at once
# crashed the processes that read it (segmentation faults in the looper's and the trainer's beat tracking, on a
# fresh install). Each worker, and what it starts, keeps a cache of its own.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".pytest_cache" / f"numba-{os.environ['PYTEST_XDIST_WORKER']}"))


def _writer_hash() -> str:
    src = (ROOT / "musicgen_local" / "testing" / "tiny.py").read_bytes()
    return hashlib.sha256(src).hexdigest()[:12]


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)


# `make test` runs the suite on two workers (pytest-xdist, TEST_JOBS): each file's tests stay on one worker, in
# order (its module fixtures are built once), and tests that share something outside their tmp_path run on one
# worker, one after the other: Ray's local cluster, and the Cog servers, which write the tree's .cog/ schema.
# (Through a scheduler of ours: xdist 3.8's `--dist loadgroup` marks its groups by rewriting `item._nodeid`, which
# pytest 9 no longer reads, so every test became a group of its own.)
COG = ("test_cog_server.py", "test_cog_looper.py", "test_cog_train.py", "test_cog_unhealthy.py", "test_cog_yaml.py")
SHARED = {"ray": "ray", **dict.fromkeys(COG, "cog")}


def _group(parts: tuple[str, ...]) -> str:
    return SHARED.get(parts[0]) or SHARED.get(parts[-1]) or "/".join(parts)


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        """Whole groups to a worker (LoadScopeScheduling's units), the group found from the test's file."""

        def _split_scope(self, nodeid: str) -> str:
            return _group(Path(nodeid.split("::", 1)[0]).parts[1:])  # "tests/ray/test_x.py::..." -> ray

    return ByGroup(config, log)


# The rings a newcomer can leave out (`make test-fast` runs none of them): by folder, so a new test file
# lands in its ring without remembering a marker. `browser` and `slow` are marked where the test is.
RINGS = {"e2e": "clients", "ray": "ray", "container": "container"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.path)).relative_to(ROOT / "tests").parts
        ring = RINGS.get(parts[0]) if len(parts) > 1 else None
        if ring and not (ring == "clients" and item.get_closest_marker("browser")):
            item.add_marker(getattr(pytest.mark, ring))
    # The container ring builds and runs a 10 GB image: it runs only where -m names it (`make test-container`,
    # CI's second step), so that `make test`, `make test-fast` and `-m "not ray"` stay as quick as they were.
    if "container" not in (config.option.markexpr or ""):
        ring = [item for item in items if item.get_closest_marker("container")]
        if ring:
            config.hook.pytest_deselected(items=ring)
            items[:] = [item for item in items if not item.get_closest_marker("container")]


@pytest.fixture(scope="session")
def tiny_weights() -> Path:
    """A weights/ directory holding every tiny checkpoint, in the real layout and formats."""
    from filelock import FileLock

    from musicgen_local.testing.tiny import write_tiny_weights
    from musicgen_local.weights import configure_environment

    cache = ROOT / ".pytest_cache" / f"tiny-weights-{_writer_hash()}"
    cache.parent.mkdir(exist_ok=True)
    with FileLock(f"{cache}.lock"):  # one writer when the suite runs on several workers
        if not (cache / ".complete").exists():
            shutil.rmtree(cache, ignore_errors=True)
            write_tiny_weights(cache)
            (cache / ".complete").touch()
    configure_environment(cache)
    return cache


@pytest.fixture(scope="session")
def settings(tiny_weights):
    from musicgen_local.settings import Settings

    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")  # each worker's engine keeps its own data folder
    return Settings(weights_dir=tiny_weights, devices="cpu", data_dir=tiny_weights.parent / f"data-{worker}")


@pytest.fixture(scope="session")
def engine(settings):
    from musicgen_local.engine import load_engine

    return load_engine(settings)
