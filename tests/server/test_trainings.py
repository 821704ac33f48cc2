"""The trainings API as Replicate's clients call it, on the torch-free fake engine: models to train into,
trainings (status, logs, webhooks, cancel, one per destination, restarts), and predictions on the version
a training made. The real trainer is proven in tests/training and tests/e2e."""

from __future__ import annotations

import io
import json
import sqlite3
import tarfile
import time

import pytest
from server_helpers import V1, make_client, wait_done

from musicgen_local.server.training import Training
from musicgen_local.testing.fake_engine import FakeEngine

TRAIN = f"/v1/models/meta/musicgen/versions/{V1}/trainings"
INPUT = {"dataset_path": "https://example.com/songs.zip", "model_version": "large"}


def wait_training(client, training_id: str, timeout: float = 10.0) -> dict:
    return wait_done(client, training_id, timeout, kind="trainings")


def _model(client, name: str = "my-sound") -> None:
    r = client.post(
        "/v1/models", json={"owner": "alice", "name": name, "visibility": "private", "hardware": "gpu-a40-large"}
    )
    assert r.status_code == 201, r.text


def test_models_are_created_listed_and_refused_twice(tmp_path):
    with make_client(tmp_path) as c:
        _model(c)
        assert c.post("/v1/models", json={"owner": "alice", "name": "my-sound"}).status_code == 409
        assert c.post("/v1/models", json={"owner": "Alice!", "name": "x"}).status_code == 422
        names = [f"{m['owner']}/{m['name']}" for m in c.get("/v1/models").json()["results"]]
        assert names == ["meta/musicgen", "andreasjansson/musicgen-looper", "alice/my-sound"]
        assert c.post("/v1/models", json={"owner": "meta", "name": "musicgen"}).status_code == 409
        model = c.get("/v1/models/alice/my-sound").json()
        assert model["visibility"] == "private" and model["latest_version"] is None
        assert c.get("/v1/models/alice/my-sound/versions").json()["results"] == []
        assert c.get("/v1/models/bob/nothing").status_code == 404


def test_a_training_makes_a_version_that_predictions_run_with_its_weights(tmp_path):
    engine = FakeEngine(step_delay_s=0.05)  # still running when its create answers, however loaded the machine
    with make_client(tmp_path, engine) as c:
        _model(c)
        created = c.post(TRAIN, json={"destination": "alice/my-sound", "input": INPUT})
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["status"] == "starting" and body["destination"] == "alice/my-sound"
        assert body["urls"]["get"].endswith(f"/v1/trainings/{body['id']}")
        engine.step_delay_s = 0.0  # the rest of it, and the predictions below, at full speed
        done = wait_training(c, body["id"])
        assert done["status"] == "succeeded", done
        model, _, version_id = done["output"]["version"].partition(":")
        assert model == "alice/my-sound" and len(version_id) == 64
        assert "step 5/5 (epoch 1/1): loss 0.2000" in done["logs"]
        weights = c.get(done["output"]["weights"].replace("http://testserver", ""))
        assert weights.status_code == 200
        with tarfile.open(fileobj=io.BytesIO(weights.content)) as tar:
            manifest = json.load(tar.extractfile("musicgen-local.json"))
        assert manifest["kind"] == "lora" and manifest["base"] == "large"
        version = c.get(f"/v1/models/alice/my-sound/versions/{version_id}").json()
        assert version["base_model_version"] == "large" and version["training"] == body["id"]
        assert c.get("/v1/models/alice/my-sound").json()["latest_version"]["id"] == version_id

        for ref in (version_id, f"alice/my-sound:{version_id}"):
            pred = c.post("/v1/predictions", json={"version": ref, "input": {"prompt": "x", "duration": 1}}).json()
            assert wait_done(c, pred["id"])["status"] == "succeeded"
            assert pred["model"] == "alice/my-sound" and pred["version"] == version_id
        pred = c.post("/v1/models/alice/my-sound/predictions", json={"input": {"prompt": "x", "duration": 1}}).json()
        assert wait_done(c, pred["id"])["status"] == "succeeded"
        tuned = [r for r in engine.requests if r.weights]
        assert len(tuned) == 3 and all(r.model_version == "large" for r in tuned)
        assert all(r.weights.endswith(f"trainings/{body['id']}/weights.tar") for r in tuned)
        base = c.post("/v1/predictions", json={"version": V1, "input": {"prompt": "x", "duration": 1}}).json()
        wait_done(c, base["id"])
        assert engine.requests[-1].weights is None

        wrong = c.post(
            "/v1/predictions", json={"version": version_id, "input": {"prompt": "x", "model_version": "stereo-large"}}
        )
        assert wrong.status_code == 422
        assert "fine-tuned from `large`" in wrong.json()["detail"]


def test_bad_trainings_are_refused_with_what_to_do(tmp_path):
    with make_client(tmp_path) as c:
        missing = c.post(TRAIN, json={"input": INPUT})
        assert missing.status_code == 422 and "destination" in missing.json()["detail"]
        nowhere = c.post(TRAIN, json={"destination": "alice/nothing", "input": INPUT})
        assert nowhere.status_code == 404 and "POST /v1/models" in nowhere.json()["detail"]
        _model(c)
        assert (
            c.post(
                "/v1/models/meta/musicgen/versions/nope/trainings",
                json={"destination": "alice/my-sound", "input": INPUT},
            ).status_code
            == 404
        )
        for bad in ({"batch_size": 0}, {"batch_size": 10_000}, {"lr": -1.0}, {"lr": 5.0}):
            r = c.post(TRAIN, json={"destination": "alice/my-sound", "input": {**INPUT, **bad}})
            assert r.status_code == 422, (bad, r.text)
            assert f"input.{next(iter(bad))}" in r.json()["detail"]
        no_dataset = c.post(TRAIN, json={"destination": "alice/my-sound", "input": {"model_version": "large"}})
        assert no_dataset.status_code == 422 and "input.dataset_path" in no_dataset.json()["detail"]
        local = c.post(TRAIN, json={"destination": "alice/my-sound", "input": {**INPUT, "dataset_path": "/etc"}})
        assert local.status_code == 422 and "input.dataset_path" in local.json()["detail"]


@pytest.mark.slow
def test_one_training_per_destination_at_once_and_cancel(tmp_path):
    engine = FakeEngine(step_delay_s=0.2)
    engine.train_steps = 100
    with make_client(tmp_path, engine) as c:
        _model(c)
        first = c.post(TRAIN, json={"destination": "alice/my-sound", "input": INPUT}).json()
        second = c.post(TRAIN, json={"destination": "alice/my-sound", "input": INPUT})
        assert second.status_code == 409 and first["id"] in second.json()["detail"]
        canceled = c.post(f"/v1/trainings/{first['id']}/cancel").json()
        assert canceled["id"] == first["id"]
        assert wait_training(c, first["id"])["status"] == "canceled"
        assert c.get("/v1/models/alice/my-sound/versions").json()["results"] == []
        again = c.post(TRAIN, json={"destination": "alice/my-sound", "input": INPUT}, headers={"Cancel-After": "5s"})
        assert again.status_code == 201
        listed = c.get("/v1/trainings").json()["results"]
        assert [t["id"] for t in listed] == [again.json()["id"], first["id"]]
        assert wait_training(c, again.json()["id"], timeout=15)["status"] == "canceled"


def test_webhooks_carry_the_training_and_its_new_version(tmp_path, receiver):
    with make_client(tmp_path, FakeEngine()) as c:
        _model(c)
        body = c.post(
            TRAIN,
            json={
                "destination": "alice/my-sound",
                "input": INPUT,
                "webhook": receiver.url,
                "webhook_events_filter": ["start", "completed"],
            },
        ).json()
        receiver.wait_for(lambda evs: evs and evs[-1]["status"] == "succeeded")
    events = receiver.events()
    assert [e["status"] for e in events] == ["processing", "succeeded"]
    assert events[-1]["id"] == body["id"] and events[-1]["output"]["version"].startswith("alice/my-sound:")


def test_a_training_interrupted_by_a_restart_resumes_and_versions_survive(tmp_path):
    with make_client(tmp_path, FakeEngine()) as c:
        _model(c)
        done = wait_training(c, c.post(TRAIN, json={"destination": "alice/my-sound", "input": INPUT}).json()["id"])
    version_id = done["output"]["version"].partition(":")[2]
    running = Training(
        id="t" * 26,
        version=V1,
        model="meta/musicgen",
        input=INPUT,
        status="processing",
        attempts=1,
        destination="alice/my-sound",
        request={
            "input": INPUT,
            "dataset": INPUT["dataset_path"],
            "work_dir": str(tmp_path / "data/trainings/tttt/work"),
            "weights_out": str(tmp_path / "data/trainings/tttt/weights.tar"),
        },
    )
    twice = Training(
        id="u" * 26,
        version=V1,
        model="meta/musicgen",
        input=INPUT,
        status="processing",
        attempts=2,
        destination="alice/other",
        request=running.request,
    )
    db = sqlite3.connect(tmp_path / "data" / "musicgen.sqlite3")
    for t in (running, twice):
        db.execute(
            "INSERT INTO trainings VALUES (?, ?, ?)", (t.id, t.created_at.isoformat(), json.dumps(t.to_record()))
        )
    db.commit()
    db.close()
    with make_client(tmp_path, FakeEngine()) as c:
        assert c.get(f"/v1/models/alice/my-sound/versions/{version_id}").status_code == 200
        resumed = wait_training(c, running.id)
        assert resumed["status"] == "succeeded"
        assert "resuming from its last checkpoint" in resumed["logs"]
        failed = c.get(f"/v1/trainings/{twice.id}").json()
        assert failed["status"] == "failed" and "stopped twice" in failed["error"]


class EngineFailingOnCancel(FakeEngine):
    """Reports a failure when canceled, as the dataset's download did ("could not be downloaded: Prediction was
    canceled.") and as any stage may that a cancel interrupts."""

    def _train(self, request, run) -> None:
        from musicgen_local.engine.api import Failed, Started

        run.emit(Started())
        run.canceled.wait(30)
        run.emit(Failed("`dataset_path` could not be downloaded: Prediction was canceled."))


def test_a_training_asked_to_cancel_ends_canceled_whatever_its_engine_says_after(tmp_path):
    """POST .../cancel and Cancel-After on a processing training ended it `failed` (issue 31, item 5)."""
    with make_client(tmp_path, EngineFailingOnCancel()) as c:
        _model(c)
        first = c.post(TRAIN, json={"destination": "alice/my-sound", "input": INPUT}).json()
        wait_processing = time.monotonic() + 10
        while c.get(f"/v1/trainings/{first['id']}").json()["status"] != "processing":
            assert time.monotonic() < wait_processing
            time.sleep(0.02)
        c.post(f"/v1/trainings/{first['id']}/cancel")
        ended = wait_training(c, first["id"])
        assert (ended["status"], ended["error"]) == ("canceled", None)
        late = c.post(TRAIN, json={"destination": "alice/my-sound", "input": INPUT}, headers={"Cancel-After": "5s"})
        ended = wait_training(c, late.json()["id"], timeout=20)
        assert (ended["status"], ended["error"]) == ("canceled", None)


class EngineWithAWorkFolder(FakeEngine):
    """Leaves in the training's work folder what the real engine does: the dataset's pieces, a checkpoint."""

    def _train(self, request, run) -> None:
        from pathlib import Path

        work = Path(request.work_dir)
        for name in ("dataset/pieces/00000-000.flac", "dataset/pieces.json", "checkpoints/checkpoint.pt"):
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes(b"x" * 1000)
        if request.params.model_version == "melody-large":  # fails, as a bad dataset does
            from musicgen_local.engine.api import Failed

            run.emit(Failed("`dataset_path` holds no audio file."))
            return
        super()._train(request, run)


def _gone(path, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return not path.exists()


def test_a_training_that_ended_leaves_its_weights_and_no_work_folder(tmp_path):
    """Every training kept its work folder (~38 MB for 120 s of audio: files, pieces, checkpoints) for ever
    (issue 31, item 9). Once it has ended, what resuming needed goes; the weights its version serves stay."""
    engine = EngineWithAWorkFolder(step_delay_s=0.05)
    with make_client(tmp_path, engine) as c:
        _model(c)
        done = wait_training(c, c.post(TRAIN, json={"destination": "alice/my-sound", "input": INPUT}).json()["id"])
        folder = tmp_path / "data" / "trainings" / done["id"]
        assert done["status"] == "succeeded" and _gone(folder / "work")
        assert [p.name for p in folder.iterdir()] == ["weights.tar"]
        assert c.get(done["output"]["weights"].replace("http://testserver", "")).status_code == 200

        melody = {**INPUT, "model_version": "melody-large"}
        failed = c.post(TRAIN, json={"destination": "alice/my-sound", "input": melody})
        assert wait_training(c, failed.json()["id"])["status"] == "failed"
        assert _gone(tmp_path / "data" / "trainings" / failed.json()["id"])

        engine.train_steps = 1000
        canceled = c.post(TRAIN, json={"destination": "alice/my-sound", "input": INPUT}).json()
        work = tmp_path / "data" / "trainings" / canceled["id"] / "work"
        deadline = time.monotonic() + 10
        while not (work / "checkpoints").exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        c.post(f"/v1/trainings/{canceled['id']}/cancel")
        assert wait_training(c, canceled["id"])["status"] == "canceled"
        assert _gone(work.parent)


def test_trainings_are_under_the_retention_setting_and_keep_their_weights(tmp_path):
    """MUSICGEN_RETENTION removes a finished training's input as a prediction's; its weights stay, since the
    version it made decodes with them."""
    with make_client(tmp_path, FakeEngine(), settings={"retention_s": 1.0}) as c:
        _model(c)
        done = wait_training(c, c.post(TRAIN, json={"destination": "alice/my-sound", "input": INPUT}).json()["id"])
        assert done["input"] == INPUT and done["data_removed"] is False
        time.sleep(1.2)
        expired = c.get(f"/v1/trainings/{done['id']}").json()
        assert (expired["status"], expired["data_removed"], expired["input"]) == ("succeeded", True, {})
        assert c.get(done["output"]["weights"].replace("http://testserver", "")).status_code == 200
        version = done["output"]["version"].partition(":")[2]
        pred = c.post("/v1/predictions", json={"version": version, "input": {"prompt": "x", "duration": 1}}).json()
        assert wait_done(c, pred["id"])["status"] == "succeeded"
