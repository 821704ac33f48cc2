"""Fine-tuning through both official clients, unchanged but for the base URL, on the real engine and the
tiny weights: models.create -> trainings.create (the dataset uploaded by the client) -> wait -> run the new
version. Its audio differs from the base model's for the same input and seed, and equals what
`musicgen-local predict --weights <the training's tar>` gives, and what Cog's predict.py gives with
COG_WEIGHTS set to it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import replicate
from e2e_helpers import TOKEN, node_client

from musicgen_local.registry import LATEST
from tests.training_helpers import PREDICT, songs_zip
from tests.training_helpers import QUICK_TRAINING as TRAINING

V1 = LATEST
ROOT = Path(__file__).resolve().parents[2]


def _wait(client: replicate.Client, training_id: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        training = client.trainings.get(training_id)
        if training.status in ("succeeded", "failed", "canceled"):
            return training
        time.sleep(0.2)
    raise AssertionError(f"training {training_id} did not finish")


@pytest.fixture(scope="module")
def trained(live_server, tmp_path_factory):
    """One training through the Python client: (client, training, new version ref)."""
    client = replicate.Client(api_token=TOKEN, base_url=live_server.url)
    client.models.create(owner="alice", name="my-sound", visibility="private", hardware="cpu")
    dataset = songs_zip(tmp_path_factory.mktemp("dataset") / "songs.zip")
    with open(dataset, "rb") as f:
        training = client.trainings.create(
            model="meta/musicgen", version=V1, destination="alice/my-sound", input={**TRAINING, "dataset_path": f}
        )
    training = _wait(client, training.id)
    assert training.status == "succeeded", (training.error, training.logs)
    return client, training, training.output["version"]


def _audio(url: str) -> bytes:
    response = httpx.get(url)
    response.raise_for_status()
    return response.content


def test_python_client_trains_and_runs_the_new_version(trained, live_server):
    client, training, ref = trained
    assert ref.startswith("alice/my-sound:") and training.output["weights"].endswith("/weights.tar")
    assert "loss" in training.logs and "pieces" in training.logs
    tuned = _audio(client.run(ref, input=PREDICT))
    base = _audio(client.run(f"meta/musicgen:{V1}", input=PREDICT))
    assert tuned != base  # the fine-tune changed what the model makes
    assert _audio(client.run(ref, input=PREDICT)) == tuned  # and it is as deterministic as the base
    listed = [t.id for t in client.trainings.list().results]
    assert training.id in listed


def test_the_weights_tar_gives_the_same_audio_in_the_cli(trained, live_server, settings, tmp_path):
    client, training, ref = trained
    tar = tmp_path / "my-weights.tar"
    tar.write_bytes(_audio(training.output["weights"]))
    out = tmp_path / "cli.wav"
    env = {**os.environ, "MUSICGEN_WEIGHTS": str(settings.weights_dir), "MUSICGEN_DEVICES": "cpu"}
    args = [sys.executable, "-m", "musicgen_local.cli", "predict", "--weights", str(tar), "-o", str(out)]
    for key, value in PREDICT.items():
        if key != "model_version":  # --weights gives it: the tar's base
            args += ["-i", f"{key}={value}"]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == _audio(client.run(ref, input=PREDICT))


def test_node_client_trains_and_runs_the_new_version(trained, live_server, tmp_path):
    dataset = songs_zip(tmp_path / "songs.zip")
    result = node_client(
        "train",
        baseUrl=live_server.url,
        token=TOKEN,
        version=V1,
        owner="alice",
        name="node-sound",
        datasetPath=str(dataset),
        trainingInput=TRAINING,
        input=PREDICT,
    )
    assert result["training"]["status"] == "succeeded", result["training"]
    assert result["training"]["output"]["version"].startswith("alice/node-sound:")
    assert _audio(result["output"]) != _audio(trained[0].run(f"meta/musicgen:{V1}", input=PREDICT))
