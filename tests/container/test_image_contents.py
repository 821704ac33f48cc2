"""What the image holds: `make install`'s pinned packages, ffmpeg, torch's CUDA build, the CPU kernel built at
build time, a non-root user; and no compiler, caches or tests."""

from __future__ import annotations

import json
import re

import pytest
from container_helpers import IMAGE, ROOT, engine, healthcheck, image_inspect

pytestmark = pytest.mark.timeout(3600)  # the first test builds the image (fixture `image`)


def run(*command: str, user: str | None = None) -> str:
    return engine("run", "--rm", *(["--user", user] if user else []), IMAGE, *command, timeout=300).stdout


def pins(text: str) -> dict[str, str]:
    """`name==version` lines (comments dropped), by canonical name."""
    lines = (line.split("#")[0].strip() for line in text.splitlines())
    pairs = (line.split("==", 1) for line in lines if "==" in line)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pairs}


def test_the_packages_make_install_pins(image):
    frozen = pins(run("pip", "list", "--format=freeze"))
    wanted = {**pins((ROOT / "requirements.txt").read_text()), "audiocraft": "1.3.0"}
    wanted["cog"] = pins((ROOT / "requirements-dev.txt").read_text())["cog"]
    assert {name: frozen.get(name) for name in wanted} == wanted
    assert "ray" not in frozen and "pytest" not in frozen and "ninja" not in frozen  # dev and build only


def test_runs_as_a_user_with_ffmpeg_rubberband_cuda_torch_and_the_prebuilt_kernel(image):
    probe = (
        "import json, os, shutil, torch; from musicgen_local.engine.fast import build, rows_kernel; "
        "print(json.dumps([os.getuid(), shutil.which('ffmpeg'), shutil.which('rubberband'), torch.version.cuda, "
        "str(rows_kernel.library()), str(build.prebuilt())]))"
    )
    uid, ffmpeg, rubberband, cuda, loaded, prebuilt = json.loads(run("python", "-c", probe).splitlines()[-1])
    assert uid != 0 and (ffmpeg, rubberband) == ("/usr/bin/ffmpeg", "/usr/bin/rubberband") and cuda == "12.8"
    assert loaded == prebuilt and prebuilt.startswith("/src/musicgen_local/engine/fast/_build/")


def test_no_compiler_caches_or_tests_are_left(image):
    listing = run(
        "sh",
        "-c",
        "for tool in cc gcc g++ c++ ld as make ninja; do command -v $tool; done; "
        "find /root /home /tmp /var/cache/apt /var/lib/apt/lists /src -mindepth 1 -maxdepth 1 | sort; "
        "find /src /opt/venv -name '*.o' | head -3",
        user="0",
    ).split()
    base = {"/root/.bashrc", "/root/.profile", "/home/musicgen", "/var/cache/apt/archives"}
    assert sorted(set(listing) - base) == [
        "/src/.cog",
        "/src/__pycache__",
        "/src/musicgen_local",
        "/src/predict.py",
        "/src/predict_looper.py",
        "/src/requirements-dev.txt",
        "/src/requirements.txt",
        "/src/train.py",
    ]


def test_the_command_volumes_and_healthcheck_a_user_relies_on(image):
    config = image_inspect()["Config"]
    assert config["User"] == "musicgen"
    assert set(config["Volumes"]) == {"/weights", "/data"} and "5000/tcp" in config["ExposedPorts"]
    assert config["Entrypoint"] == ["tini", "--"]
    assert config["Cmd"] == ["python", "-m", "musicgen_local", "serve", "--host", "0.0.0.0", "--port", "5000"]
    assert "/health-check" in " ".join(healthcheck()["Test"])
    env = dict(item.split("=", 1) for item in config["Env"])
    assert (env["MUSICGEN_WEIGHTS"], env["MUSICGEN_DATA"]) == ("/weights", "/data")
