"""The v2 Python SDK (PyPI `replicate` 2.0.0b4), unchanged but for its base URL (which includes /v1), on the real
engine and tiny weights: predictions, run, files, hardware, account, search, a training through it, and one
deployment's life (create, predict, update to the fine-tune that training made, predict, delete). It runs in its own
virtual environment (.venv-sdk2, made by `make install`), since the 1.0.7 client in .venv has the same name."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest
from e2e_helpers import TOKEN

from musicgen_local.registry import LATEST
from tests.training_helpers import PREDICT, QUICK_TRAINING, songs_zip

ROOT = Path(__file__).resolve().parents[2]
SDK2 = ROOT / ".venv-sdk2" / "bin" / "python"


def sdk2(action: str, **args) -> dict:
    if not SDK2.exists():
        pytest.skip("the v2 SDK's virtual environment is missing: run `make install` (or `make sdk2`)")
    proc = subprocess.run(
        [str(SDK2), str(Path(__file__).with_name("sdk2_client.py")), action, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(live_server, tmp_path_factory) -> str:
    """A fine-tune made through the v2 SDK; its version id."""
    dataset = songs_zip(tmp_path_factory.mktemp("sdk2-dataset") / "songs.zip")
    seen = sdk2(
        "train",
        baseUrl=live_server.url,
        token=TOKEN,
        version=LATEST,
        owner="alice",
        name="sdk2-sound",
        dataset=str(dataset),
        trainingInput=QUICK_TRAINING,
    )
    training = seen["training"]
    assert training["status"] == "succeeded", training
    assert training["id"] in seen["listed"]
    model, _, version = training["output"]["version"].partition(":")
    assert model == "alice/sdk2-sound"
    return version


def _audio(url: str) -> bytes:
    response = httpx.get(url)
    response.raise_for_status()
    return response.content


def test_predictions_run_files_hardware_account_and_search(live_server, melody_wav):
    seen = sdk2("basics", baseUrl=live_server.url, token=TOKEN, version=LATEST, input=PREDICT, file=str(melody_wav))
    assert seen["hardware"] == [{"name": "CPU", "sku": "cpu"}]
    assert seen["account"] == {"type": "user", "username": "local", "name": "local", "github_url": None}
    created = seen["created"]
    assert created["status"] == "succeeded" and created["output"].startswith(f"{live_server.url}/delivery/")
    assert created["urls"]["web"] == f"{live_server.url}/p/{created['id']}"  # required by the v2 schema
    assert set(created["metrics"]) == {"predict_time", "total_time"}
    assert seen["fetched"]["id"] == created["id"] and created["id"] in seen["listed"]
    assert seen["run"].startswith(f"{live_server.url}/delivery/")
    assert _audio(seen["run"]) == _audio(created["output"])  # the same input and seed: the same audio
    assert seen["file"]["name"] == "melody.wav" and seen["file"]["urls"]["get"].startswith(live_server.url)
    assert sorted(hit["model"]["name"] for hit in seen["search"]["models"]) == ["musicgen", "musicgen-looper"]
    assert "musicgen" in seen["models_search"]


def test_one_deployments_life_through_the_v2_sdk(live_server, trained):
    seen = sdk2(
        "deployment",
        baseUrl=live_server.url,
        token=TOKEN,
        version=LATEST,
        tuned=trained,
        deployment="my-sound-prod",
        input=PREDICT,
    )
    print(json.dumps(seen, indent=2))  # the life, for the docs (`pytest -s`)
    created, updated = seen["create"]["current_release"], seen["update"]["current_release"]
    assert (seen["create"]["owner"], seen["create"]["name"]) == ("local", "my-sound-prod")
    assert (created["number"], created["model"], created["version"]) == (1, "meta/musicgen", LATEST)
    assert created["configuration"] == {"hardware": "cpu", "min_instances": 1, "max_instances": 2}
    assert (updated["number"], updated["model"], updated["version"]) == (2, "alice/sdk2-sound", trained)
    before, after = seen["predict"], seen["predict_after_update"]
    assert before["status"] == after["status"] == "succeeded"
    assert before["deployment"] == after["deployment"] == "local/my-sound-prod"
    assert before["deadline"] and "deadline" not in after
    assert (before["version"], after["version"], after["model"]) == (LATEST, trained, "alice/sdk2-sound")
    # The update moved it to the fine-tune: same input and seed, the fine-tune's audio, not the base model's.
    assert _audio(after["output"]) != _audio(before["output"])
    direct = httpx.post(
        f"{live_server.url}/v1/predictions",
        json={"version": trained, "input": PREDICT},
        headers={"Authorization": f"Bearer {TOKEN}", "Prefer": "wait"},
        timeout=120,
    ).json()
    assert _audio(after["output"]) == _audio(direct["output"])
    assert seen["get"]["current_release"]["number"] == 2
    assert [d["name"] for d in seen["list"]] == ["my-sound-prod"]
    assert seen["delete"] is None and seen["get_after_delete"] == "NotFoundError 404"
