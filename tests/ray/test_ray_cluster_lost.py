"""The Ray cluster going away under a running server: predictions fail with a message that says so,
/health-check says UNHEALTHY, the API keeps answering, and the engine joins the cluster once it is back."""

from __future__ import annotations

import httpx
import pytest
import replicate
from ray_helpers import Cluster, wait_for

from tests.e2e.e2e_helpers import TOKEN, LiveServer

V1 = "b05b1dff1d8c6dc63d14b0cdb42135378dcb87f6373b0d3d341ede46e59e2b38"


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

        running = client.predictions.create(version=V1, input={"prompt": "long", "duration": 300,
                                                                "model_version": "large"})
        wait_for(lambda: status(running.id) == "processing", 60)
        cluster.kill()
        wait_for(lambda: health() == "UNHEALTHY", 30)
        wait_for(lambda: status(running.id) == "failed", 30)
        assert "Ray cluster" in client.predictions.get(running.id).error

        refused = client.predictions.create(version=V1, input={"prompt": "x", "duration": 1, "model_version": "large"})
        wait_for(lambda: status(refused.id) == "failed", 30)
        assert "cannot be reached" in client.predictions.get(refused.id).error
        assert {p.id for p in client.predictions.list().results} == {running.id, refused.id}

        back = Cluster(num_cpus=2, port=cluster.port)  # the same address: the engine joins it again
        try:
            wait_for(lambda: health() == "READY", 180, lambda: str(ray_engine.health()))
            again = client.predictions.create(version=V1, input={"prompt": "x", "duration": 1,
                                                                  "model_version": "large"})
            wait_for(lambda: status(again.id) == "succeeded", 60)
        finally:
            ray_engine.close()  # before its cluster goes
            back.stop()
