"""Deployments as Replicate's clients call them, on the torch-free fake engine: a deployment's life (create, get,
list, predict through it, move it to a fine-tune, delete), its releases, its pin kept by the engine and restored
after a restart, its max_instances, and every refusal with a message that says what to do. The real engine's pins
are tests/engine/test_pins.py; the official clients' are tests/e2e/test_deployments_clients.py."""

from __future__ import annotations

import itertools
import time

import pytest
from server_helpers import V1, make_client, wait_done

from musicgen_local.database import Database
from musicgen_local.registry import Registry, Version
from musicgen_local.testing.fake_engine import FakeEngine

TUNED = "f" * 64
CREATE = {
    "name": "prod",
    "model": "meta/musicgen",
    "version": V1,
    "hardware": "cpu",
    "min_instances": 1,
    "max_instances": 2,
}


def add_tuned_version(client, model: str = "alice/my-sound", version_id: str = TUNED) -> str:
    """A LoRA version of `model` (created here), as a finished training adds it."""
    assert (
        client.post("/v1/models", json={"owner": model.split("/")[0], "name": model.split("/")[1]}).status_code == 201
    )
    registry = Registry(Database(client.app.state.settings.data_dir / "musicgen.sqlite3"))
    registry.add_version(Version(version_id, model, "2026-01-01T00:00:00.000000Z", "large", "/w/lora.tar", "lora"))
    registry.close()
    return version_id


def create(client, **changes) -> dict:
    response = client.post("/v1/deployments", json={**CREATE, **changes})
    assert response.status_code == 200, response.text
    return response.json()


def predict(client, deployment: str = "local/prod", wait: bool = True, **input) -> dict:
    response = client.post(
        f"/v1/deployments/{deployment}/predictions",
        json={"input": {"prompt": "x", "duration": 1, **input}},
        headers={"Prefer": "wait"} if wait else {},
    )
    assert response.status_code == 201, response.text
    return response.json()


def test_a_deployments_life_create_predict_move_to_a_fine_tune_predict_delete(tmp_path):
    engine = FakeEngine()
    with make_client(tmp_path, engine) as c:
        assert c.get("/v1/hardware").json() == [{"sku": "cpu", "name": "CPU"}]
        assert c.get("/v1/account").json() == {"type": "user", "username": "local", "name": "local", "github_url": None}
        made = create(c)
        release = made["current_release"]
        assert (made["owner"], made["name"], release["number"], release["model"], release["version"]) == (
            "local",
            "prod",
            1,
            "meta/musicgen",
            V1,
        )
        assert release["configuration"] == {"hardware": "cpu", "min_instances": 1, "max_instances": 2}
        assert release["created_by"]["username"] == "local"
        assert engine.pins == {"local/prod": ("stereo-melody-large", None, "cpu", None)}  # its model kept warm
        assert c.get("/v1/deployments/local/prod").json() == made
        assert c.get("/v1/deployments").json()["results"] == [made]

        first = predict(c)
        assert first["status"] == "succeeded" and first["deployment"] == "local/prod"
        assert (first["model"], first["version"]) == ("meta/musicgen", V1)

        tuned = add_tuned_version(c)
        moved = c.patch("/v1/deployments/local/prod", json={"version": tuned})
        assert moved.status_code == 200, moved.text
        assert moved.json()["current_release"]["number"] == 2
        assert moved.json()["current_release"]["model"] == "alice/my-sound"
        adapter = f"alice/my-sound:{tuned}"  # the adapter kept in a slot is the one its predictions name
        assert engine.pins == {"local/prod": ("large", "/w/lora.tar", "cpu", adapter)}
        second = predict(c)
        assert (second["model"], second["version"], second["deployment"]) == ("alice/my-sound", tuned, "local/prod")
        assert engine.requests[-1].weights == "/w/lora.tar" and engine.requests[-1].model_version == "large"
        assert engine.requests[-1].tune == adapter

        assert c.delete("/v1/deployments/local/prod").status_code == 204
        assert c.get("/v1/deployments/local/prod").status_code == 404
        assert engine.pins == {}
        assert c.get(f"/v1/predictions/{first['id']}").json()["deployment"] == "local/prod"  # its predictions stay


def test_each_update_is_a_new_release_and_min_instances_0_lets_the_model_go(tmp_path):
    engine = FakeEngine()
    with make_client(tmp_path, engine) as c:
        create(c)
        for number, change in enumerate(({"max_instances": 4}, {"min_instances": 0}, {"hardware": "cpu"}), start=2):
            body = c.patch("/v1/deployments/local/prod", json=change).json()
            assert body["current_release"]["number"] == number
        assert body["current_release"]["configuration"] == {"hardware": "cpu", "min_instances": 0, "max_instances": 4}
        assert engine.pins == {}
        assert c.patch("/v1/deployments/local/prod", json={"min_instances": 1}).status_code == 200
        assert "local/prod" in engine.pins


@pytest.mark.parametrize(
    ("changes", "status", "says"),
    [
        ({"hardware": "gpu-a40-large"}, 422, "one of this server's devices (cpu), not 'gpu-a40-large'"),
        ({"min_instances": 3, "max_instances": 2}, 422, "must not be more than `max_instances` (2)"),
        ({"min_instances": 6}, 422, "min_instances"),
        ({"max_instances": 21}, 422, "max_instances"),
        ({"version": "0" * 64}, 422, f"No version '{'0' * 64}' of meta/musicgen"),
        ({"model": "alice/other"}, 422, "of alice/other"),
        ({"name": "Prod!"}, 422, "`name` must be lowercase letters"),
        ({"name": "someone/prod"}, 422, "belong to the account 'local': name it local/prod"),
    ],
)
def test_a_bad_deployment_is_refused_with_what_to_do(tmp_path, changes, status, says):
    with make_client(tmp_path) as c:
        response = c.post("/v1/deployments", json={**CREATE, **changes})
        assert response.status_code == status and says in response.json()["detail"], response.text
        assert c.get("/v1/deployments").json()["results"] == []


def test_a_deployment_whose_model_does_not_fit_is_refused_and_not_created(tmp_path):
    engine = FakeEngine()
    engine.pin_room = 1
    with make_client(tmp_path, engine) as c:
        create(c)
        refused = c.post("/v1/deployments", json={**CREATE, "name": "other", "max_instances": 1, "version": V1})
        assert refused.status_code == 200  # the same model: it shares the pin's room
        tuned = add_tuned_version(c)
        refused = c.post(
            "/v1/deployments", json={**CREATE, "name": "third", "model": "alice/my-sound", "version": tuned}
        )
        assert refused.status_code == 422
        assert refused.json()["detail"].startswith("Cannot keep local/third warm: `large` needs 1.00 GiB on cpu")
        assert c.get("/v1/deployments/local/third").status_code == 404 and "local/third" not in engine.pins
        moved = c.patch("/v1/deployments/local/prod", json={"version": tuned})  # an update refused keeps the old
        assert moved.status_code == 422
        assert c.get("/v1/deployments/local/prod").json()["current_release"]["number"] == 1
        assert engine.pins["local/prod"][0] == "stereo-melody-large"


def test_duplicates_missing_ones_and_empty_updates(tmp_path):
    with make_client(tmp_path) as c:
        create(c)
        assert c.post("/v1/deployments", json=CREATE).status_code == 409
        assert c.get("/v1/deployments/local/nothing").status_code == 404
        assert c.patch("/v1/deployments/local/nothing", json={"min_instances": 0}).status_code == 404
        assert c.delete("/v1/deployments/local/nothing").status_code == 404
        response = c.post("/v1/deployments/local/nothing/predictions", json={"input": {"prompt": "x"}})
        assert response.status_code == 404 and "Create it with POST /v1/deployments" in response.json()["detail"]
        empty = c.patch("/v1/deployments/local/prod", json={})
        assert empty.status_code == 422 and "at least one of version" in empty.json()["detail"]
        assert c.get("/v1/deployments?cursor=nonsense").status_code == 400


def test_the_list_is_newest_first_in_pages(tmp_path):
    with make_client(tmp_path, page_size=2) as c:
        for name in ("a", "b", "c"):
            create(c, name=name, min_instances=0)
        first = c.get("/v1/deployments").json()
        assert [d["name"] for d in first["results"]] == ["c", "b"] and first["previous"] is None
        second = c.get(first["next"]).json()
        assert [d["name"] for d in second["results"]] == ["a"] and second["next"] is None


def test_a_version_or_model_a_deployment_uses_cannot_be_deleted(tmp_path):
    with make_client(tmp_path) as c:
        tuned = add_tuned_version(c)
        create(c, model="alice/my-sound", version=tuned)
        refused = c.delete(f"/v1/models/alice/my-sound/versions/{tuned}")
        assert refused.status_code == 409
        assert refused.json()["detail"].startswith(f"alice/my-sound:{tuned} is used by the deployment local/prod")
        assert c.delete("/v1/models/alice/my-sound").status_code == 409
        assert c.delete(f"/v1/models/meta/musicgen/versions/{V1}").status_code == 409  # published
        c.patch("/v1/deployments/local/prod", json={"version": V1})
        assert c.delete("/v1/models/alice/my-sound").status_code == 409  # it still has its version
        assert c.delete(f"/v1/models/alice/my-sound/versions/{tuned}").status_code == 204
        assert c.delete("/v1/models/alice/my-sound").status_code == 204
        assert c.get("/v1/models/alice/my-sound").status_code == 404


def test_deployments_survive_a_restart_and_their_models_are_kept_warm_again(tmp_path):
    with make_client(tmp_path) as c:
        made = create(c)
    engine = FakeEngine()
    with make_client(tmp_path, engine) as c:
        assert c.get("/v1/deployments/local/prod").json() == made
        assert engine.pins == {"local/prod": ("stereo-melody-large", None, "cpu", None)}
        assert predict(c)["status"] == "succeeded"


def _statuses(client, preds: list[dict]) -> list[str]:
    return [client.get(f"/v1/predictions/{p['id']}").json()["status"] for p in preds]


def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_max_instances_caps_a_deployments_predictions_and_the_rest_wait_in_order(tmp_path):
    engine = FakeEngine(step_delay_s=0.01, concurrency=8)
    with make_client(tmp_path, engine) as c:
        create(c, max_instances=1)
        mine = [predict(c, wait=False, duration=2, seed=i) for i in (1, 2, 3)]
        other = c.post("/v1/predictions", json={"version": V1, "input": {"prompt": "y", "duration": 2}}).json()
        _until(lambda: _statuses(c, [other])[0] == "processing")  # others go ahead of the capped ones
        statuses = _statuses(c, mine)
        while statuses != ["succeeded"] * 3:
            assert statuses.count("processing") <= 1, statuses
            time.sleep(0.02)
            statuses = _statuses(c, mine)
        assert [r.seed for r in engine.started if r.prompt == "x"] == [1, 2, 3]  # in order
        ended = [c.get(f"/v1/predictions/{p['id']}").json() for p in mine]
        for before, after in itertools.pairwise(ended):  # each started once the one before it had ended
            assert after["started_at"] >= before["completed_at"], (before, after)


def test_max_instances_0_holds_them_until_it_is_raised(tmp_path):
    engine = FakeEngine(step_delay_s=0.002, concurrency=8)
    with make_client(tmp_path, engine) as c:
        create(c, min_instances=0, max_instances=0)
        held = predict(c, wait=False)
        time.sleep(0.5)
        assert _statuses(c, [held]) == ["starting"] and engine.started == []
        c.patch("/v1/deployments/local/prod", json={"max_instances": 1})
        assert wait_done(c, held["id"])["status"] == "succeeded"


def test_a_deployments_prediction_has_the_rest_of_the_prediction_object(tmp_path):
    with make_client(tmp_path) as c:
        create(c)
        response = c.post(
            "/v1/deployments/local/prod/predictions",
            json={"input": {"prompt": "x", "duration": 1}},
            headers={"Prefer": "wait=5", "Cancel-After": "1m"},
        )
        body = response.json()
        assert response.headers["location"] == body["urls"]["get"]
        assert body["urls"]["web"] == f"http://testserver/p/{body['id']}"
        assert body["deadline"] and body["deadline"] > body["created_at"]
        assert set(body["metrics"]) == {"predict_time", "total_time"}
        assert body["metrics"]["total_time"] >= body["metrics"]["predict_time"]


def test_a_deployment_of_the_looper_keeps_its_default_model_warm(tmp_path):
    from musicgen_local.registry import LOOPER, LOOPER_PUBLISHED

    engine = FakeEngine()
    with make_client(tmp_path, engine) as c:
        create(c, name="loops", model=LOOPER, version=LOOPER_PUBLISHED[0])
        assert engine.pins == {"local/loops": ("medium", None, "cpu", None)}
