"""What this server has, as Replicate lists it: its hardware, its account, and models and versions found by text
(QUERY /v1/models and GET /v1/search), fine-tunes included."""

from __future__ import annotations

import pytest
from server_helpers import make_client
from test_deployments import add_tuned_version


@pytest.fixture
def client(tmp_path):
    with make_client(tmp_path) as c:
        add_tuned_version(c, "alice/lofi-drums", "a" * 64)
        c.post("/v1/models", json={"owner": "bob", "name": "strings", "description": "Warm string quartets"})
        yield c


def found(client, text: str) -> list[str]:
    response = client.request("QUERY", "/v1/models", content=text, headers={"Content-Type": "text/plain"})
    assert response.status_code == 200, response.text
    return [f"{m['owner']}/{m['name']}" for m in response.json()["results"]]


def test_query_finds_models_by_name_description_version_and_tags(client):
    assert found(client, "lofi") == ["alice/lofi-drums"]
    assert found(client, "QUARTETS") == ["bob/strings"]  # the description, whatever the case
    assert found(client, "aaaaaaaa") == ["alice/lofi-drums"]  # a version's id
    assert found(client, "lora large") == ["alice/lofi-drums"]  # its version's kind and base
    assert found(client, "fine-tune") == ["alice/lofi-drums"]
    assert found(client, "lofi strings") == []  # every word must be found
    everything = ["alice/lofi-drums", "andreasjansson/musicgen-looper", "bob/strings", "meta/musicgen"]
    assert found(client, "") == everything  # all, in name order
    assert found(client, "loops") == ["andreasjansson/musicgen-looper"]
    assert found(client, "musicgen") == ["andreasjansson/musicgen-looper", "meta/musicgen"]
    assert found(client, '"lofi"') == ["alice/lofi-drums"]  # as the v2 SDK sends it: a JSON string


def test_search_scores_and_tags_what_it_finds(client):
    body = client.get("/v1/search", params={"query": "meta musicgen"}).json()
    assert body["query"] == "meta musicgen" and body["collections"] == [] and body["pages"] == []
    (hit,) = body["models"]
    assert hit["model"]["url"].endswith("/v1/models/meta/musicgen") and "published" in hit["metadata"]["tags"]
    (tuned,) = client.get("/v1/search", params={"query": "lora"}).json()["models"]
    assert tuned["metadata"]["tags"] == ["fine-tune", "lora", "large"]
    assert tuned["metadata"]["generated_description"] == "1 fine-tuned version of meta/musicgen (lora, large)"
    names = [h["model"]["name"] for h in client.get("/v1/search", params={"query": "s"}).json()["models"]]
    assert len(names) == 4
    assert len(client.get("/v1/search", params={"query": "", "limit": 1}).json()["models"]) == 1
    assert client.get("/v1/search", params={"query": "x", "limit": 51}).status_code == 422
    assert client.get("/v1/search").status_code == 422


def test_query_that_is_not_text_is_refused(client):
    response = client.request("QUERY", "/v1/models", content=b"\xff\xfe")
    assert response.status_code == 400 and "UTF-8" in response.json()["detail"]


def test_hardware_is_a_bare_list_and_the_account_is_the_setting(tmp_path):
    with make_client(tmp_path, settings={"account": "acme"}) as c:
        assert c.get("/v1/hardware").json() == [{"sku": "cpu", "name": "CPU"}]
        assert c.get("/v1/account").json()["username"] == "acme"
        created = c.post(
            "/v1/deployments",
            json={
                "name": "acme/x",
                "model": "meta/musicgen",
                "version": "b05b1dff1d8c6dc63d14b0cdb42135378dcb87f6373b0d3d341ede46e59e2b38",
                "hardware": "cpu",
                "min_instances": 0,
                "max_instances": 1,
            },
        )
        assert created.status_code == 200 and created.json()["owner"] == "acme"
