"""The engine as a Ray Serve deployment: each replica runs a `LocalEngine` on the device Ray gave it.

A replica streams a Run's events back through a streaming handle (`generate` is an async
generator); closing the stream (the caller's `response.cancel()`, or the caller going away) cancels
the run on the replica. Requests carry their `model_version` as Serve's multiplexed model id, so
the router sends a request to a replica that already holds its model, and a new model to the
replica holding the fewest. This module imports ray; torch is only imported inside a replica.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import serve

from ...settings import Settings
from ..api import Failed, Log, Request, TrainingRequest

APP = "musicgen"  # the Serve application's name on the cluster
BOARD, BOARD_NAMESPACE = "musicgen-health-board", "musicgen_local"  # where replicas post their engine's health
HEALTH_PERIOD_S = 5.0  # Serve's probe (check_health) every this long; each probe also posts to the board
HEALTH_STALE_S = 30.0  # a replica not heard from this long is gone from the board
GRACE_S = 30  # a replica being stopped lets its runs finish this long
REMOTE_INPUTS = ("http://", "https://", "data:")  # what `input_audio` may be once it reaches a replica
LOCAL_PATH = "`input_audio` reached an engine replica as a local path; the API sends files inline (data: URIs)."


@ray.remote(num_cpus=0)
class HealthBoard:
    """Each replica's latest engine health (devices, models, counters), for the API's /metrics: Serve routes a
    call to one replica, so the replicas post here and the bridge reads all of them at once."""

    def __init__(self) -> None:
        self.posted: dict[str, tuple[float, dict[str, Any]]] = {}

    def post(self, replica: str, health: dict[str, Any]) -> None:
        self.posted[replica] = (time.time(), health)

    def read(self) -> dict[str, dict[str, Any]]:
        now = time.time()
        self.posted = {r: (t, h) for r, (t, h) in self.posted.items() if now - t < HEALTH_STALE_S}
        return {r: h for r, (_, h) in self.posted.items()}


@serve.deployment(
    name="MusicgenEngine",
    max_queued_requests=-1,
    graceful_shutdown_timeout_s=GRACE_S,
    health_check_period_s=HEALTH_PERIOD_S,
)
class EngineReplica:
    def __init__(self, settings: Settings) -> None:
        from ..local import LocalEngine  # torch: here, in the replica, never in the process that deploys

        self.scratch = Path(tempfile.mkdtemp(prefix="musicgen-replica-"))  # inputs being read, on this node
        device = "cuda" if ray.get_gpu_ids() else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES to this replica's share
        self.engine = LocalEngine(settings.with_(devices=device, data_dir=self.scratch))
        self.engine.wait_ready()  # Serve routes nothing here before the models are warm
        context = serve.get_replica_context()
        self.replica_id = context.replica_id.unique_id
        self.name = (
            f"{self.replica_id} ({self.engine.health()['devices'][0]['device']}, "
            f"pid {os.getpid()} on {socket.gethostname()})"
        )

    def check_health(self) -> None:
        """Serve's periodic probe: a replica whose device failed for good is replaced (its runs have ended).
        It also posts the engine's health to the board (fire and forget: a board that is gone changes nothing)."""
        health = self.engine.health()
        try:
            ray.get_actor(BOARD, namespace=BOARD_NAMESPACE).post.remote(self.replica_id, health)
        except ValueError:  # no board (an older bridge, or it is being replaced)
            pass
        if health.get("status") == "UNHEALTHY":
            raise RuntimeError(health.get("error", "the device failed"))

    @serve.multiplexed(max_num_models_per_replica=-1)
    async def _holds(self, model_version: str) -> str:
        """Tells the router that this replica now holds `model_version`; the engine's device loop loads
        it (and evicts by MUSICGEN_MAX_MODELS) when the request reaches it."""
        return model_version

    async def generate(self, request: Request, stream: bool):
        await self._holds(serve.get_multiplexed_model_id())
        yield Log(f"Engine replica: {self.name}")
        ref = getattr(request, "input_audio", None)  # a LoopRequest has none
        if ref and not ref.startswith(REMOTE_INPUTS):
            yield Failed(LOCAL_PATH, kind="internal")  # this machine may not be the one the path was meant for
            return
        run = self.engine.submit(request, stream=stream)
        try:
            async for event in run:
                yield event
        finally:  # the caller canceled or went away: stop generating
            run.cancel()

    async def train(self, request: TrainingRequest):
        yield Log(f"Engine replica: {self.name}")
        run = self.engine.train(request)
        try:
            async for event in run:
                yield event
        finally:  # the caller canceled or went away: stop training
            run.cancel()

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()
        shutil.rmtree(getattr(self, "scratch", ""), ignore_errors=True)


@dataclass(frozen=True)
class ReplicaPlan:
    """How many replicas, and what each one takes from the cluster."""

    min_replicas: int
    max_replicas: int
    num_gpus: float
    num_cpus: float
    per_replica: int  # runs one replica takes at once: a batch, and a batch being prepared

    @property
    def capacity(self) -> int:
        return self.max_replicas * self.per_replica


def plan(settings: Settings, cluster: dict[str, float]) -> ReplicaPlan:
    """One replica per GPU of the cluster (one on CPU) unless MUSICGEN_RAY_REPLICAS says otherwise.
    More replicas than GPUs share them (two replicas on one GPU take half of it each)."""
    gpus, cpus = cluster.get("GPU", 0.0), cluster.get("CPU", 1.0)
    low, high = settings.ray_replicas or (max(1, int(gpus)),) * 2
    per_replica = 2 * (settings.max_batch if settings.decoder == "fast" else 1)
    if gpus:
        return ReplicaPlan(low, high, min(1.0, gpus / high), 1.0, per_replica)
    return ReplicaPlan(low, high, 0.0, min(1.0, cpus / high), per_replica)


def application(settings: Settings, p: ReplicaPlan) -> Any:
    """The bound Serve application, ready for `serve.run`."""
    scaling: dict[str, Any] = {"num_replicas": p.min_replicas}
    if p.max_replicas > p.min_replicas:  # Serve scales on requests running or queued per replica
        scaling = {
            "autoscaling_config": {
                "min_replicas": p.min_replicas,
                "max_replicas": p.max_replicas,
                "target_ongoing_requests": max(1, p.per_replica // 2),
            }
        }
    replica_settings = settings.with_(api_token="")  # the replicas need no secret of the API's
    return EngineReplica.options(
        max_ongoing_requests=p.per_replica,
        ray_actor_options={"num_gpus": p.num_gpus, "num_cpus": p.num_cpus},
        **scaling,
    ).bind(replica_settings)
