"""A real Ray cluster on 127.0.0.1 per test module, and the engine on it: two CPU replicas on tiny weights."""

from __future__ import annotations

import secrets

import pytest
from ray_helpers import Cluster, wait_for


@pytest.fixture(scope="module")
def cluster():
    # Token authentication with a token of this module's own: Ray turns it on for `ray start` whenever
    # ~/.ray/auth_token exists (a `local` run writes one), and a driver given an address must then be told.
    # The Ray driver process (`engine/ray/bridge.py`) inherits this environment.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_MODE", "token")
        env.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
        env.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
        cluster = Cluster(num_cpus=2)
        yield cluster
        cluster.stop()


@pytest.fixture(scope="module")
def ray_settings(settings, cluster, tmp_path_factory):
    # Two requests per model decode together on a replica (so a batch is visible in the logs), and a
    # replica takes 2 x 2 runs at once.
    return settings.with_(
        ray_address=cluster.address,
        ray_replicas=(2, 2),
        max_batch=2,
        warmup="none",
        data_dir=tmp_path_factory.mktemp("ray-data"),
    )


@pytest.fixture(scope="module")
def ray_engine(ray_settings):
    from musicgen_local.engine import load_engine

    engine = load_engine(ray_settings)
    wait_for(lambda: engine.health()["status"] == "READY", 180, lambda: f"engine not ready: {engine.health()}")
    yield engine
    engine.close()
