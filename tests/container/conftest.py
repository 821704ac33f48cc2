"""The container ring (marker `container`, run by `make test-container` and CI, never by `make test`): the image
`make image` builds, run as a user runs it. Skipped where no container engine can run, unless
REQUIRE_CONTAINER_ENGINE=1 (CI) makes that a failure."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from container_helpers import ENGINE, IMAGE, ROOT, Container, engine, unique


def _no_engine(why: str) -> None:
    if os.environ.get("REQUIRE_CONTAINER_ENGINE") == "1":
        pytest.fail(f"REQUIRE_CONTAINER_ENGINE=1, but {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def image(tmp_path_factory) -> str:
    """The image, built by `make image`'s script (seconds when its layers are cached)."""
    which = subprocess.run([ENGINE, "--which"], capture_output=True, text=True, check=True).stdout.strip()
    if shutil.which(which) is None:
        _no_engine(f"no Docker daemon answers and {which} is not installed (scripts/ensure-podman.sh installs it)")
    info = engine("info", check=False)
    if info.returncode != 0:
        _no_engine(f"`{which} info` fails here: {info.stderr.strip()[-500:]}")
    log = tmp_path_factory.mktemp("image") / "build.log"
    with log.open("w") as out:
        built = subprocess.run(
            ["bash", "scripts/build-image.sh"],
            cwd=ROOT,
            env={**os.environ, "IMAGE": IMAGE},
            stdout=out,
            stderr=out,
            check=False,
        )
    assert built.returncode == 0, f"make image failed:\n{log.read_text()[-5000:]}"
    return IMAGE


@pytest.fixture
def containers(image) -> Iterator[list[Container]]:
    """Containers a test starts (append them); removed, with their anonymous volumes, when it ends."""
    started: list[Container] = []
    yield started
    for container in started:
        container.remove()


@pytest.fixture
def data_volume(image) -> Iterator[str]:
    """A named volume for /data, as the README's `-v musicgen-data:/data`."""
    name = unique("data")
    engine("volume", "create", name)
    yield name
    engine("volume", "rm", "-f", name, check=False)
