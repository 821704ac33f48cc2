"""The v1 API from the Cog image: docs/operating.md's `docker run ... python -m musicgen_local serve` runs the source
tree the image holds (/src, not an installed package). Here: a copy of the tracked tree, the same command, the
tiny weights, one prediction."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from musicgen_local.registry import PUBLISHED
from musicgen_local.testing.live import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_python_m_musicgen_local_serve_from_the_source_tree(tiny_weights, tmp_path):
    src = tmp_path / "src"
    for name in subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines():
        if name.startswith("musicgen_local/"):
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSICGEN_") and k != "PYTHONPATH"}
    env.update(
        MUSICGEN_WEIGHTS=str(tiny_weights),
        MUSICGEN_DATA=str(tmp_path / "data"),
        MUSICGEN_WARMUP="none",
        MUSICGEN_DEVICES="cpu",
    )
    which = subprocess.run(
        [sys.executable, "-c", "import musicgen_local; print(musicgen_local.__file__)"],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert which == str(src / "musicgen_local" / "__init__.py")  # the tree, as in the image's /src
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "musicgen_local", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=src,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/health-check", timeout=2).json()["status"] == "READY":
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        done = httpx.post(
            f"{url}/v1/predictions",
            headers={"Prefer": "wait=60"},
            timeout=90,
            json={"version": PUBLISHED[0], "input": {"prompt": "x", "duration": 1, "model_version": "large"}},
        ).json()
        assert done["status"] == "succeeded" and httpx.get(done["output"]).content[:4] == b"RIFF"
        assert httpx.get(f"{url}/").status_code == 200  # the playground
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def test_tiny_weights_are_readable_by_the_images_user(tiny_weights):
    """The image runs as its own user (uid 1000): a weights dir written here and mounted as /weights must hold no
    file only its writer can read (safetensors writes 0600; `musicgen-local weights tiny` opens them up)."""
    umask = os.umask(0)
    os.umask(umask)
    if umask & 0o004:
        pytest.skip(f"umask {umask:03o} keeps new files from other users")
    private = [p for p in tiny_weights.rglob("*") if p.is_file() and not p.stat().st_mode & 0o004]
    assert private == []
