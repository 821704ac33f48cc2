"""The Ray cluster going away under a running server: predictions fail with a message that says so,
/health-check says UNHEALTHY, the API keeps answering, and the engine joins the cluster once it is back.
The same when the Ray driver process dies, alone or before it could report its cluster gone."""

from __future__ import annotations

import os
import signal

import httpx
import pytest
import replicate
from ray_helpers import Cluster, listening, ray_driver_pid, wait_for

from musicgen_local.registry import LATEST
from tests.e2e.e2e_helpers import TOKEN, LiveServer

V1 = LATEST


@pytest.fixture(scope="module")
def ray_settings(ray_settings):
    return ray_settings.with_(ray_replicas=(1, 1), api_token=TOKEN)


def test_a_lost_cluster_fails_predictions_clearly_and_the_api_keeps_answering(ray_engine, ray_settings, cluster):
    with LiveServer(ray_settings, ray_engine) as server:
        client = replicate.Client(api_token=TOKEN, base_url=server.url)

        def status(pred_id: str) -> str:
            return client.predictions.get(pred_id).status

        def health() -> str:
            return httpx.get(f"{server.url}/health-check").json()["status"]

        running = client.predictions.create(
            version=V1, input={"prompt": "long", "duration": 300, "model_version": "large"}
        )
        wait_for(lambda: status(running.id) == "processing", 60)
        cluster.kill()
        wait_for(lambda: health() == "UNHEALTHY", 30)
        wait_for(lambda: status(running.id) == "failed", 30)
        assert "Ray cluster" in client.predictions.get(running.id).error
        assert "stopped answering" in client.predictions.get(running.id).error

        refused = client.predictions.create(version=V1, input={"prompt": "x", "duration": 1, "model_version": "large"})
        wait_for(lambda: status(refused.id) == "failed", 30)
        assert "cannot be reached" in client.predictions.get(refused.id).error
        assert {p.id for p in client.predictions.list().results} == {running.id, refused.id}

        back = Cluster(num_cpus=2, port=cluster.port)  # the same address: the engine joins it again
        try:
            wait_for(lambda: health() == "READY", 180, lambda: str(ray_engine.health()))
            again = client.predictions.create(
                version=V1, input={"prompt": "x", "duration": 1, "model_version": "large"}
            )
            wait_for(lambda: status(again.id) == "succeeded", 60)

            # The Ray driver process dies alone: its prediction fails saying so, and a new driver takes over.
            running = client.predictions.create(
                version=V1, input={"prompt": "long", "duration": 300, "model_version": "large"}
            )
            wait_for(lambda: status(running.id) == "processing", 60)
            os.kill(ray_driver_pid(), signal.SIGKILL)
            wait_for(lambda: status(running.id) == "failed", 30)
            assert "the Ray driver process ended" in client.predictions.get(running.id).error
            wait_for(lambda: health() == "READY", 180, lambda: str(ray_engine.health()))

            # Ray may end the driver of a lost cluster before the driver reports the loss. Then the API
            # tells the user why, and it still names the cluster.
            running = client.predictions.create(
                version=V1, input={"prompt": "long", "duration": 300, "model_version": "large"}
            )
            wait_for(lambda: status(running.id) == "processing", 60)
            driver = ray_driver_pid()
            os.kill(driver, signal.SIGSTOP)  # it cannot report the loss...
            back.kill()
            wait_for(lambda: not listening(back.port), 30)
            os.kill(driver, signal.SIGKILL)  # ...and it ends without a word
            wait_for(lambda: status(running.id) == "failed", 30)
            error = client.predictions.get(running.id).error
            assert f"The engine stopped while this prediction was running: the Ray cluster at {back.address}" in error
            assert "stopped answering" in error
        finally:
            ray_engine.close()  # before its cluster goes
            back.stop()
