"""Deployments through the npm `replicate` 1.4 and PyPI `replicate` 1.0.7 clients (the v2 SDK's are in
test_sdk2_client.py), unchanged but for the base URL, on the real engine and tiny weights: hardware, account,
create, predict, move to a fine-tune, predict (its audio, not the base's), list, search, delete."""

from __future__ import annotations

import httpx
import pytest
import replicate
from e2e_helpers import TOKEN, add_lora_version, node_client
from replicate.exceptions import ReplicateError

from musicgen_local.registry import LATEST
from tests.training_helpers import PREDICT


def _audio(url: str) -> bytes:
    response = httpx.get(url)
    response.raise_for_status()
    return response.content


@pytest.fixture(scope="module")
def client(live_server) -> replicate.Client:
    return replicate.Client(api_token=TOKEN, base_url=live_server.url)  # the host root: 1.0.7 adds /v1


def _tuned(client, live_settings, name: str) -> str:
    client.models.create(owner="alice", name=name, visibility="private", hardware="cpu")
    return add_lora_version(live_settings, f"alice/{name}", seed=5)


def test_python_client_deployments(client, live_settings):
    assert [(h.sku, h.name) for h in client.hardware.list()] == [("cpu", "CPU")]
    assert client.accounts.current().username == "local"
    made = client.deployments.create(
        name="local/py-prod", model="meta/musicgen", version=LATEST, hardware="cpu", min_instances=1, max_instances=1
    )
    assert (made.owner, made.name, made.current_release.number) == ("local", "py-prod", 1)
    before = client.deployments.predictions.create("local/py-prod", input=PREDICT, wait=True)
    assert before.status == "succeeded" and before.version == LATEST
    tuned = _tuned(client, live_settings, "py-tuned")
    moved = client.deployments.update("local", "py-prod", version=tuned)
    assert (moved.current_release.number, moved.current_release.model) == (2, "alice/py-tuned")
    after = client.deployments.get("local/py-prod").predictions.create(input=PREDICT, wait=True)
    assert (after.status, after.version) == ("succeeded", tuned)
    assert _audio(after.output) != _audio(before.output)  # the fine-tune's audio now
    assert "py-prod" in [d.name for d in client.deployments.list().results]
    assert [m.name for m in client.models.search("py-tuned").results] == ["py-tuned"]
    versions = client.models.get("alice/py-tuned").versions
    with pytest.raises(ReplicateError) as refused:  # the deployment runs it
        versions.delete(tuned)
    assert refused.value.status == 409 and "used by the deployment local/py-prod" in refused.value.detail
    assert client.deployments.delete("local", "py-prod") is True
    with pytest.raises(ReplicateError) as gone:
        client.deployments.get("local/py-prod")
    assert gone.value.status == 404
    assert versions.delete(tuned) is True and client.models.delete("alice", "py-tuned") is True


def test_node_client_deployments(client, live_server, live_settings):
    tuned = _tuned(client, live_settings, "node-tuned")
    seen = node_client(
        "deployment",
        baseUrl=live_server.url,
        token=TOKEN,
        version=LATEST,
        tuned=tuned,
        name="node-prod",
        input=PREDICT,
        search="node-tuned",
    )
    assert seen["hardware"] == [{"sku": "cpu", "name": "CPU"}] and seen["account"]["username"] == "local"
    assert seen["create"]["current_release"]["configuration"]["min_instances"] == 1
    before, after = seen["predict"], seen["predictAfterUpdate"]
    assert before["status"] == after["status"] == "succeeded"
    assert (before["deployment"], after["deployment"]) == ("local/node-prod", "local/node-prod")
    assert (seen["update"]["current_release"]["number"], after["version"]) == (2, tuned)
    assert _audio(after["output"]) != _audio(before["output"])
    assert "node-prod" in seen["list"] and seen["search"] == ["alice/node-tuned"]
    assert seen["delete"] is True and seen["getAfterDelete"] == 404
    assert seen["waitTooLong"]["status"] == 422 and "from 1 to 60" in seen["waitTooLong"]["message"]
