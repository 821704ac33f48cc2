"""Fine-tuning through both official clients, unchanged but for the base URL, on the real engine and the
tiny weights: models.create -> trainings.create (the dataset uploaded by the client) -> wait -> run the new
version. Its audio differs from the base model's for the same input and seed, and equals what
`musicgen-local predict --weights <the training's tar>` gives, and what Cog's predict.py gives with
COG_WEIGHTS set to it."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import wave
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import replicate
from e2e_helpers import TOKEN, node_client

V1 = "b05b1dff1d8c6dc63d14b0cdb42135378dcb87f6373b0d3d341ede46e59e2b38"
ROOT = Path(__file__).resolve().parents[2]
# A few quick updates at a high learning rate: enough to move a tiny model's tokens, a few seconds on CPU.
TRAINING = {"model_version": "large", "epochs": 1, "updates_per_epoch": 4, "batch_size": 2, "lr": 0.01,
            "lora_rank": 4, "seed": 3, "drop_vocals": False, "auto_labeling": False}
PREDICT = {"prompt": "my sound", "duration": 1, "seed": 11, "model_version": "large"}


def _dataset(path: Path) -> Path:
    """A zip of two 3 s clips (a chord and noise) with descriptions."""
    rate = 32000
    t = np.arange(3 * rate) / rate
    clips = {"chord": 0.3 * sum(np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0)) / 3,
             "noise": 0.2 * np.random.default_rng(0).standard_normal(t.size)}
    with zipfile.ZipFile(path, "w") as z:
        for name, wav in clips.items():
            buffer = io.BytesIO()
            with wave.open(buffer, "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(rate)
                w.writeframes((np.clip(wav, -1, 1) * 32767).astype("<i2").tobytes())
            z.writestr(f"songs/{name}.wav", buffer.getvalue())
            z.writestr(f"songs/{name}.txt", f"my sound, {name}")
    return path


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
    dataset = _dataset(tmp_path_factory.mktemp("dataset") / "songs.zip")
    with open(dataset, "rb") as f:
        training = client.trainings.create(model="meta/musicgen", version=V1, destination="alice/my-sound",
                                           input={**TRAINING, "dataset_path": f})
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
    dataset = _dataset(tmp_path / "songs.zip")
    result = node_client("train", baseUrl=live_server.url, token=TOKEN, version=V1, owner="alice",
                         name="node-sound", datasetPath=str(dataset), trainingInput=TRAINING, input=PREDICT)
    assert result["training"]["status"] == "succeeded", result["training"]
    assert result["training"]["output"]["version"].startswith("alice/node-sound:")
    assert _audio(result["output"]) != _audio(trained[0].run(f"meta/musicgen:{V1}", input=PREDICT))
