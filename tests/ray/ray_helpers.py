"""A real Ray cluster for the tests (`ray start --head` on 127.0.0.1, in a temporary directory, in a
process group of its own so that it can be stopped, or killed to test a lost cluster, by that id),
and helpers to read a Run's events."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from musicgen_local.engine.api import Done, Log
from musicgen_local.testing.live import free_port

ROOT = Path(__file__).resolve().parents[2]


class Cluster:
    def __init__(self, num_cpus: int = 2, port: int | None = None) -> None:
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths have a length cap
        ray = Path(sys.executable).with_name("ray")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
        self.log = open(Path(self.temp_dir) / "ray-start.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                str(ray),
                "start",
                "--head",
                "--block",
                f"--port={self.port}",
                f"--temp-dir={self.temp_dir}",
                f"--num-cpus={num_cpus}",
                "--num-gpus=0",
                "--node-ip-address=127.0.0.1",
                "--include-dashboard=false",
                "--disable-usage-stats",
                f"--ray-client-server-port={free_port()}",
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_listening()

    def _wait_listening(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, Path(self.log.name).read_text()
            if listening(self.port):
                return
            time.sleep(0.5)
        raise AssertionError(f"the Ray head did not listen on {self.address} within {timeout} s")

    def kill(self) -> None:
        """Every process of the cluster, at once, as a crashed head machine would go."""
        for pid in [self.process.pid, *self._descendants()]:
            _signal(pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """`ray start --block` stops the cluster on SIGTERM; what is left after 15 s is killed. Ray's workers
        run in process groups of their own, so they are found as descendants of the head, by process id."""
        pids = self._descendants()
        _signal(self.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in [self.process.pid, *pids]) and time.monotonic() < deadline:
            self.process.poll()
            time.sleep(0.2)
        for pid in [self.process.pid, *pids, *self._descendants()]:
            _signal(pid, signal.SIGKILL)
        self.process.wait()
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _descendants(self) -> list[int]:
        children = _children()
        found, todo = [], [self.process.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                found.append(child)
                todo.append(child)
        return found


def _children() -> dict[int, list[int]]:
    """Every process's children, by parent id, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return children


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def ray_driver_pid() -> int:
    """The Ray driver process (`engine/ray/bridge.py`) that the engine in this test process started."""
    for pid in _children().get(os.getpid(), []):
        try:
            args = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"musicgen_local.engine.ray.bridge" in args and _alive(pid):
            return pid
    raise AssertionError("the engine has no Ray driver process")


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def wait_for(condition, timeout: float, message=lambda: "timed out") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message()
        time.sleep(0.2)


def log_lines(events) -> list[str]:
    return [e.line for e in events if isinstance(e, Log)]


def replicas_of(events) -> list[str]:
    """The replica ids the events say ran the request, in order (more than one after a re-run)."""
    return [line.split()[2] for line in log_lines(events) if line.startswith("Engine replica: ")]


def pid_of(events) -> int:
    line = next(line for line in log_lines(events) if line.startswith("Engine replica: "))
    return int(line.split(" pid ")[1].split()[0])


def audio_of(events) -> bytes:
    assert isinstance(events[-1], Done), events[-1]
    return events[-1].result.audio
