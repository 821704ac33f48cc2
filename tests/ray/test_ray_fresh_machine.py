"""MUSICGEN_RAY_ADDRESS=local on a machine where Ray has never run: no ~/.ray, no RAY_* variable. The server starts
the local cluster with a token of its own (Ray's token authentication otherwise finds none, and its GCS server dies)
and generates on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATE = """
import time
from musicgen_local.engine import Request, load_engine, result_of
engine = load_engine()
deadline = time.monotonic() + 240
while engine.health()["status"] != "READY":
    assert time.monotonic() < deadline, engine.health()
    time.sleep(0.5)
result = result_of(engine.submit(Request(model_version="large", prompt="x", duration=1, seed=1)))
print("samples", result.num_samples)
engine.close()
"""


def test_a_local_cluster_starts_where_ray_never_ran(settings, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        HOME=str(home),
        PYTHONPATH=str(ROOT),
        MUSICGEN_RAY_ADDRESS="local",
        MUSICGEN_WEIGHTS=str(settings.weights_dir),
        MUSICGEN_DEVICES="cpu",
        MUSICGEN_WARMUP="none",
        MUSICGEN_DATA=str(tmp_path / "data"),
    )
    command = [sys.executable, "-c", GENERATE]
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "samples 32000" in done.stdout
