"""cog.yaml uses only keys cog documents, builds what `make install` builds, and names files that exist.

Documented keys: replicate/cog `pkg/config/config.go` (Config / Build yaml tags) and docs/yaml.md;
`run:` (top level, replacing `predict:`) and `build.sdk_version` per the 0.20+ notes in
/work/shared/reference/replicate-musicgen.md §1.3 and §2.6.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TOP_KEYS = {"build", "image", "run", "predict", "train", "concurrency", "environment", "weights", "tests"}
BUILD_KEYS = {
    "gpu",
    "cuda",
    "cudnn",
    "python_version",
    "python_requirements",
    "python_packages",
    "system_packages",
    "run",
    "pre_install",
    "sdk_version",
}
TORCH_CUDA = {"2.9.1": "12.8"}  # PyPI's torch wheels for Linux x86_64 and the CUDA they are built against


@pytest.fixture(scope="module")
def cog() -> dict:
    return yaml.safe_load((ROOT / "cog.yaml").read_text())


def pins(path: Path) -> dict[str, str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return dict(line.split("==", 1) for line in lines if "==" in line)


def test_only_documented_keys(cog):
    assert set(cog) <= TOP_KEYS
    assert set(cog["build"]) <= BUILD_KEYS
    assert "predict" not in cog, "cog >= 0.20 names the predictor with `run:`"
    assert all(isinstance(step, str) for step in cog["build"]["run"])
    assert all(re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", item) for item in cog.get("environment", []))


def test_gpu_cuda_and_python_match_the_pinned_torch(cog):
    build = cog["build"]
    assert build["gpu"] is True
    torch = pins(ROOT / "requirements.txt")["torch"]
    assert build["cuda"] == TORCH_CUDA[torch]
    assert str(build["python_version"]) in {"3.11", "3.12"}  # coglet needs >= 3.10; our pins are tested on these
    assert "ffmpeg" in build["system_packages"]


def test_same_requirements_and_audiocraft_step_as_make_install(cog):
    build = cog["build"]
    assert build["python_requirements"] == "requirements.txt"
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text().splitlines()
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install -r requirements-dev.txt" in makefile
    for step in build["run"]:
        assert step.removeprefix("pip ") in makefile, step
    assert "pip install --no-deps audiocraft==1.3.0" in build["run"]
    assert build["sdk_version"] == pins(ROOT / "requirements-dev.txt")["cog"]


def test_every_referenced_file_exists(cog):
    module, cls = cog["run"].split(":")
    tree = ast.parse((ROOT / module).read_text())
    assert cls in {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert (ROOT / cog["build"]["python_requirements"]).is_file()
    env = dict(item.split("=", 1) for item in cog["environment"])
    assert env["MUSICGEN_WEIGHTS"] == "/src/weights"  # cog copies the project to /src
    assert env["MUSICGEN_AUTO_FETCH"] == "1"
    assert (ROOT / "weights" / "README.md").is_file()


def test_dockerignore_keeps_junk_out_and_weights_in():
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "**/__pycache__", ".pytest_cache", "data"} <= ignored
    assert not ignored & {"weights", "weights/", "*.py", ".cog", "predict.py", "musicgen_local", "requirements.txt"}


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_image_explains_what_is_missing(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()  # a PATH with make's tools but no docker, podman or apt-get
    for tool in ("sh", "bash", "env"):
        (fake_bin / tool).symlink_to(f"/bin/{tool}")
    command = [shutil.which("make"), "-s", "image", f"VENV={tmp_path / 'no-venv'}"]
    env = {**{k: v for k, v in os.environ.items() if k != "CONTAINER_ENGINE"}, "PATH": str(fake_bin)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "make image needs Docker (with its daemon running) or podman and runc" in result.stderr
