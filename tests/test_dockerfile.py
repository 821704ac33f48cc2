"""The Dockerfile installs what `make install` installs and keeps the conventions docs/operating.md states (tag,
port, volumes, settings). Checked by reading the files; tests/container builds and runs the image itself."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
OPERATING = (ROOT / "docs" / "operating.md").read_text()


def instruction(name: str) -> list[str]:
    """Every `NAME ...` line of the Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    return [line[len(name) :].strip() for line in joined.splitlines() if line.startswith(f"{name} ")]


def test_the_packages_are_make_installs():
    makefile = (ROOT / "Makefile").read_text()
    install = " ".join(instruction("RUN"))
    assert "pip install -r requirements.txt" in install and "pip install -r requirements-dev.txt" in makefile
    assert (
        "pip install --no-deps audiocraft==1.3.0" in install and "pip install --no-deps audiocraft==1.3.0" in makefile
    )
    assert "grep -E '^cog==' requirements-dev.txt" in install  # cog's pin, from the file make install reads


def test_the_kernel_step_copies_every_file_the_kernel_is_built_from():
    """The CPU kernel's layer is built from its own files only (so that other edits leave it cached): build.py's
    sources and headers must all be among them."""
    from fnmatch import fnmatch

    from musicgen_local.engine.fast import build

    copied = next(c.split()[:-1] for c in instruction("COPY") if "musicgen_local/engine/fast/build.py" in c)
    for path in (*build.SOURCES, *build.HEADERS):
        name = str(path.relative_to(ROOT))
        assert any(fnmatch(name, pattern) for pattern in copied), name


def test_python_and_cuda_agree_with_cog_yaml():
    cog = yaml.safe_load((ROOT / "cog.yaml").read_text())
    assert instruction("ARG")[0] == f"BASE=python:{cog['build']['python_version']}-slim"
    apt = next(arg for arg in instruction("ARG") if arg.startswith("APT_PACKAGES="))
    assert set(cog["build"]["system_packages"]) <= set(apt.split("=", 1)[1].strip('"').split())


def test_every_system_package_make_install_adds_for_the_server_is_in_the_image():
    """scripts/ensure-*.sh install what the server runs (ffmpeg, rubberband, ...); the image's one apt list must
    name each. Chromium (the browser tests) and podman (`make image` itself) are for this machine only."""
    apt = next(arg for arg in instruction("ARG") if arg.startswith("APT_PACKAGES=")).split("=", 1)[1].strip('"')
    for script in sorted((ROOT / "scripts").glob("ensure-*.sh")):
        if script.name in ("ensure-chromium.sh", "ensure-podman.sh"):
            continue
        wanted = re.findall(
            r"apt-get install -y -qq ([a-z0-9][a-z0-9+.-]*(?: [a-z0-9][a-z0-9+.-]*)*)", script.read_text()
        )
        assert wanted and set(" ".join(wanted).split()) <= set(apt.split()), script.name


def test_the_docs_run_the_image_as_the_dockerfile_builds_it():
    assert instruction("VOLUME") == ['["/weights", "/data"]'] and instruction("EXPOSE") == ["5000"]
    env = " ".join(instruction("ENV"))
    assert "MUSICGEN_WEIGHTS=/weights" in env and "MUSICGEN_DATA=/data" in env
    assert instruction("USER") == ["musicgen"]
    assert "docker build -t musicgen-local ." in OPERATING
    run = re.search(r"docker run -d --name musicgen --gpus all -p 5000:5000 \\\n(.*\n){2}", OPERATING)
    assert run and ":/weights " in run.group(0) and ":/data " in run.group(0) and "-e MUSICGEN_" in run.group(0)
