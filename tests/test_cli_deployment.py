"""`musicgen-local predict --deployment owner/name`: what a deployment of the server in MUSICGEN_DATA runs now,
run here: the same audio as `--weights` with its version's fine-tune, not the base model's."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from musicgen_local.database import Database
from musicgen_local.deployments import Configuration, Deployments
from musicgen_local.registry import Registry
from tests.e2e.e2e_helpers import add_lora_version

INPUT = ["-i", "prompt=my sound", "-i", "duration=1", "-i", "seed=11"]


def cli(*args, settings, cwd):
    env = dict(os.environ, MUSICGEN_WEIGHTS=str(settings.weights_dir), MUSICGEN_DATA=str(settings.data_dir))
    return subprocess.run(
        [sys.executable, "-m", "musicgen_local.cli", "predict", *args],
        cwd=cwd,
        env={**env, "MUSICGEN_DEVICES": "cpu"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture
def deployed(settings, tmp_path):
    """A server's data folder holding local/prod, deployed on a LoRA version of alice/my-sound."""
    data = settings.with_(data_dir=tmp_path / "data")
    data.data_dir.mkdir()
    db = Database(data.data_dir / "musicgen.sqlite3")
    Registry(db).create_model("alice", "my-sound")
    version = add_lora_version(data, "alice/my-sound", seed=2)
    deployments = Deployments(db)
    deployments.add(Deployments.new("local", "prod", "alice/my-sound", version, Configuration("cpu", 0, 1)))
    weights = Registry(db).version(version).weights
    db.close()
    return data, weights


@pytest.mark.slow
def test_predict_through_a_deployment_runs_its_fine_tune(deployed, tmp_path):
    data, weights = deployed
    through = cli("--deployment", "local/prod", *INPUT, "-o", str(tmp_path / "d.wav"), settings=data, cwd=tmp_path)
    assert through.returncode == 0, through.stderr
    assert "local/prod: alice/my-sound:" in through.stderr
    direct = cli("--weights", weights, *INPUT, "-o", str(tmp_path / "w.wav"), settings=data, cwd=tmp_path)
    base = cli(*INPUT, "-i", "model_version=large", "-o", str(tmp_path / "b.wav"), settings=data, cwd=tmp_path)
    assert direct.returncode == 0 and base.returncode == 0, (direct.stderr, base.stderr)
    assert (tmp_path / "d.wav").read_bytes() == (tmp_path / "w.wav").read_bytes()
    assert (tmp_path / "d.wav").read_bytes() != (tmp_path / "b.wav").read_bytes()


def test_an_unknown_deployment_is_a_message(deployed, tmp_path):
    data, _ = deployed
    done = cli("--deployment", "local/nothing", *INPUT, settings=data, cwd=tmp_path)
    assert done.returncode == 1 and "No deployment 'local/nothing'" in done.stderr and "local/prod" in done.stderr
    nowhere = cli(
        "--deployment", "local/prod", *INPUT, settings=data.with_(data_dir=Path(tmp_path / "x")), cwd=tmp_path
    )
    assert nowhere.returncode == 1 and "No server data in" in nowhere.stderr
