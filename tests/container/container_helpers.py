"""The container ring's helpers: the engine `make image` uses (scripts/container-engine: Docker where a daemon
answers, else podman), the image it builds, and containers run from it the way the README's commands run them."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from musicgen_local.testing.live import free_port

ROOT = Path(__file__).resolve().parents[2]
ENGINE = str(ROOT / "scripts" / "container-engine")
IMAGE = "musicgen-local"
TOKEN = "r8_container_test_token"
# Tiny models are all per-op overhead, and this machine's cores are shared (see tests/conftest.py).
QUIET = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def engine(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args[:3])} ... exited {result.returncode}: {result.stderr[-3000:]}")
    return result


def unique(prefix: str) -> str:
    return f"musicgen-test-{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Container:
    """One `docker run -d -p 127.0.0.1:<port>:5000 ...` of the image, removed when the test ends."""

    volumes: dict[str, str]  # host path or volume name -> path in the container (":ro" suffix allowed)
    env: dict[str, str] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    name: str = field(default_factory=lambda: unique("run"))
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Container:
        args = ["run", "-d", "--name", self.name, "-p", f"127.0.0.1:{self.port}:5000"]
        for source, target in self.volumes.items():
            args += ["-v", f"{source}:{target}"]
        for key, value in {**QUIET, **self.env}.items():
            args += ["-e", f"{key}={value}"]
        engine(*args, IMAGE, *self.command)
        return self

    def state(self) -> dict:
        return json.loads(engine("inspect", "--format", "{{json .State}}", self.name).stdout)

    def logs(self) -> str:
        result = engine("logs", self.name, check=False)
        return result.stdout + result.stderr

    def wait_ready(self, timeout: float = 300, ready: tuple[str, ...] = ("READY",)) -> dict:
        """/health-check from the host until it says READY; fails with the container's log if it stops."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.state()["Running"], f"the container stopped:\n{self.logs()[-5000:]}"
            try:
                health = httpx.get(f"{self.url}/health-check", timeout=5).json()
                if health["status"] in ready:
                    return health
            except (httpx.HTTPError, ValueError):
                pass
            assert time.monotonic() < deadline, f"not READY after {timeout} s:\n{self.logs()[-5000:]}"
            time.sleep(1)

    def exec(self, *command: str) -> subprocess.CompletedProcess:
        return engine("exec", self.name, *command)

    def stop(self, grace: int = 120) -> float:
        """`docker stop -t grace`: SIGTERM, then SIGKILL after `grace` seconds. Returns the seconds it took."""
        start = time.monotonic()
        engine("stop", "-t", str(grace), self.name, timeout=grace + 60)
        return time.monotonic() - start

    def remove(self) -> None:
        engine("rm", "-f", "-v", self.name, check=False)  # -v: its anonymous volumes too


def image_inspect() -> dict:
    return json.loads(engine("image", "inspect", IMAGE).stdout)[0]


def healthcheck() -> dict:
    """The image's HEALTHCHECK: Docker shows it in the image's Config, podman beside it."""
    found = image_inspect()
    return found.get("Healthcheck") or found["Config"]["Healthcheck"]


def healthcheck_command() -> list[str]:
    """The HEALTHCHECK's command, as the engine runs it (its test is ["CMD-SHELL", "..."] or ["CMD", ...])."""
    kind, *rest = healthcheck()["Test"]
    return ["sh", "-c", rest[0]] if kind == "CMD-SHELL" else rest
