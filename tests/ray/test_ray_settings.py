"""MUSICGEN_RAY_* settings, how replicas share a cluster, and an API process that imports neither torch nor ray."""

from __future__ import annotations

import subprocess
import sys

import pytest

from musicgen_local.engine.ray.deployment import plan
from musicgen_local.settings import Settings


def test_replicas_setting_is_a_count_or_a_range():
    assert Settings.from_env({}).ray_replicas is None
    assert Settings.from_env({"MUSICGEN_RAY_REPLICAS": "3"}).ray_replicas == (3, 3)
    assert Settings.from_env({"MUSICGEN_RAY_REPLICAS": "1-4"}).ray_replicas == (1, 4)
    for bad in ("0", "4-1", "two", "1-"):
        with pytest.raises(ValueError, match="MUSICGEN_RAY_REPLICAS"):
            Settings.from_env({"MUSICGEN_RAY_REPLICAS": bad})


def test_ray_client_addresses_are_refused_with_what_to_use_instead():
    assert Settings.from_env({"MUSICGEN_RAY_ADDRESS": " auto "}).ray_address == "auto"
    with pytest.raises(ValueError, match="MUSICGEN_RAY_ADDRESS=auto"):
        Settings.from_env({"MUSICGEN_RAY_ADDRESS": "ray://head:10001"})


def test_one_replica_per_gpu_unless_told_otherwise():
    settings = Settings(max_batch=8)
    four_gpus = plan(settings, {"GPU": 4.0, "CPU": 32.0})
    assert (four_gpus.min_replicas, four_gpus.max_replicas, four_gpus.num_gpus) == (4, 4, 1.0)
    assert four_gpus.capacity == 4 * 16
    halves = plan(settings.with_(ray_replicas=(2, 2)), {"GPU": 1.0, "CPU": 16.0})  # the GPU wiring check
    assert (halves.max_replicas, halves.num_gpus) == (2, 0.5)
    cpu = plan(settings, {"CPU": 2.0})
    assert (cpu.max_replicas, cpu.num_gpus, cpu.num_cpus) == (1, 0.0, 1.0)
    autoscaled = plan(settings.with_(ray_replicas=(1, 8)), {"GPU": 8.0, "CPU": 64.0})
    assert (autoscaled.min_replicas, autoscaled.max_replicas, autoscaled.num_gpus) == (1, 8, 1.0)


def test_the_api_side_of_the_ray_engine_imports_neither_torch_nor_ray():
    code = (
        "import sys; from musicgen_local.engine.ray.client import RayEngine; "
        "from musicgen_local.server import create_app; "
        "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
