"""train.py under Cog's own server (coglet 0.23, train mode, outside Docker), on tiny weights: POST /trainings
returns the weights tar; predict.py started with COG_WEIGHTS set to that tar serves the fine-tune, the same
bytes the engine gives for it, and not the base model's."""

from __future__ import annotations

import base64
import io
import wave
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest

from musicgen_local import tuned
from musicgen_local.engine import Request, load_engine, result_of
from tests.cog_helpers import CogServer

ROOT = Path(__file__).resolve().parents[1]
PREDICT = {"model_version": "large", "prompt": "my sound", "duration": 1, "seed": 5}


def _zip() -> bytes:
    rate, buffer = 32000, io.BytesIO()
    t = np.arange(2 * rate) / rate
    with zipfile.ZipFile(buffer, "w") as z:
        wav = io.BytesIO()
        with wave.open(wav, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes((0.3 * np.sin(2 * np.pi * 330 * t) * 32767).astype("<i2").tobytes())
        z.writestr("song.wav", wav.getvalue())
        z.writestr("song.txt", "my sound")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def trained_tar(tiny_weights, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cog-train")
    server = CogServer(tiny_weights, folder / "train.log", "--train")
    try:
        assert httpx.get(f"{server.url}/").json()["trainings_url"] == "/trainings"
        dataset = "data:application/zip;base64," + base64.b64encode(_zip()).decode()
        response = httpx.post(
            f"{server.url}/trainings",
            timeout=300,
            json={
                "input": {
                    "dataset_path": dataset,
                    "model_version": "large",
                    "epochs": 1,
                    "updates_per_epoch": 3,
                    "batch_size": 2,
                    "lr": 0.01,
                    "drop_vocals": False,
                    "seed": 1,
                }
            },
        )
        body = response.json()
        assert response.status_code == 200 and body["status"] == "succeeded", body
        assert "step 3/3" in body["logs"]
        bad = httpx.post(
            f"{server.url}/trainings", timeout=60, json={"input": {"dataset_path": dataset, "batch_size": 0}}
        )
        assert bad.status_code == 422
    finally:
        server.stop()
    tar = folder / "weights.tar"
    tar.write_bytes(base64.b64decode(body["output"]["weights"].split(",", 1)[1]))
    return tar


@pytest.mark.slow
def test_cog_train_returns_the_tar_predict_py_serves_with_cog_weights(trained_tar, tiny_weights, settings, tmp_path):
    found = tuned.read(trained_tar)
    assert (found.kind, found.base) == ("lora", "large")
    server = CogServer(tiny_weights, tmp_path / "predict.log", env={"COG_WEIGHTS": str(trained_tar)})
    try:
        body = httpx.post(f"{server.url}/predictions", timeout=300, json={"input": PREDICT}).json()
    finally:
        server.stop()
    assert body["status"] == "succeeded", body
    served = base64.b64decode(body["output"].split(",", 1)[1])
    engine = load_engine(settings.with_(warmup="none", data_dir=tmp_path / "engine"))
    try:
        tuned_audio = result_of(engine.submit(Request(**PREDICT, weights=str(trained_tar)))).audio
        base_audio = result_of(engine.submit(Request(**PREDICT))).audio
    finally:
        engine.close()
    assert served == tuned_audio != base_audio
