"""`RayEngine`: the engine on a Ray Serve cluster, seen from the API process (MUSICGEN_RAY_ADDRESS).

The same `EngineClient` as the in-process engine: submit a Request, iterate its Run, cancel it.
This process imports neither torch nor ray: a child process (`bridge.py`) is the Ray driver, and
the two exchange requests and the engine's plain events over a pipe. If that process ends (the
cluster went away), the runs in flight fail with a message that says so, new ones fail at once,
health says UNHEALTHY, and a new bridge is started every RECONNECT_S until the cluster answers.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ...errors import EngineError, UserError
from ...settings import Settings
from ..api import TERMINAL, Failed, Request, TrainingRequest
from ..run import EventQueue

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 180.0  # joining (or starting) the cluster
RECONNECT_S = 10.0
CLOSE_TIMEOUT_S = 60.0  # the replicas' own graceful stop, and a margin
UNREACHABLE = (
    "The Ray cluster that runs the engine ({address}) cannot be reached: {reason}. The prediction was "
    "not run; create it again once /health-check says READY."
)


class RayEngine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._runs: dict[int, EventQueue] = {}
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._closing = threading.Event()
        self._health: dict[str, Any] = {"status": "STARTING"}
        self._lost_because = ""
        self._bridge: subprocess.Popen | None = None
        self._bridge_env = bridge_environment(settings.ray_address, os.environ)
        self._conn, info = self._launch()
        if self._conn is None:
            raise EngineError(f"Could not use the Ray cluster at MUSICGEN_RAY_ADDRESS={settings.ray_address}: {info}")
        self.capacity = info["capacity"]  # runs worth having in flight: 2 x MUSICGEN_MAX_BATCH per replica
        self._gcs = info["gcs"]  # host:port of the cluster, probed before joining it again
        self._supervisor = threading.Thread(target=self._supervise, name="ray-bridge-supervisor", daemon=True)
        self._supervisor.start()

    # ---------------------------------------------------------------------------------- EngineClient

    def submit(self, request: Request, *, stream: bool = False) -> EventQueue:
        request = request.with_seed()  # fixed here, so that a re-run on another replica gives the same audio
        run_id = next(self._ids)
        run = EventQueue(on_cancel=lambda run: self._send(("cancel", run_id)))
        self._runs[run_id] = run
        if not self._send(("submit", run_id, request, stream)):
            self._end(run_id, Failed(self._unreachable(), kind="internal"))
        return run

    def train(self, request: TrainingRequest) -> EventQueue:
        run_id = next(self._ids)
        run = EventQueue(on_cancel=lambda run: self._send(("cancel", run_id)))
        self._runs[run_id] = run
        if not self._send(("train", run_id, request)):
            self._end(run_id, Failed(self._unreachable(), kind="internal"))
        return run

    def health(self) -> dict[str, Any]:
        return {**self._health, "engine": "ray", "ray_address": self.settings.ray_address}

    def hardware(self) -> list[dict[str, str]]:
        """The cluster is one piece of hardware to a deployment: Serve places its predictions on the replicas."""
        return [{"sku": "ray", "name": f"Ray cluster at {self.settings.ray_address}"}]

    def keep(self, name: str, model_version: str, weights: str | None, device: str, tune: str | None = None) -> Future:
        """Not carried to the replicas yet: a deployment here keeps nothing warm (min_instances 0)."""
        done: Future = Future()
        done.set_exception(
            UserError(
                "Keeping a deployment's model warm (min_instances >= 1) is not carried to a Ray cluster "
                "(MUSICGEN_RAY_ADDRESS) yet: set min_instances to 0; its predictions run on the replicas all the same."
            )
        )
        return done

    def let_go(self, name: str) -> None:
        """Nothing was kept (see `keep`)."""

    def close(self) -> None:
        self._closing.set()
        self._send(("close",))  # the bridge deletes the replicas (and stops a `local` cluster), then exits
        bridge = self._bridge
        try:
            bridge.wait(timeout=CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            bridge.kill()
            bridge.wait()

    # ---------------------------------------------------------------------------------- the bridge

    def _launch(self) -> tuple[Any, Any]:
        """Start a bridge and wait until it joined the cluster: (conn, info), or (None, why not)."""
        ours, theirs = socket.socketpair()
        # A fresh interpreter (not multiprocessing, which would import the caller's __main__ again), in a
        # session of its own: a Ctrl-C at the terminal is the server's to handle (it drains, then closes us).
        self._bridge = subprocess.Popen(
            [sys.executable, "-m", "musicgen_local.engine.ray.bridge", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            start_new_session=True,
            env=self._bridge_env,
        )
        theirs.close()
        conn = Connection(ours.detach())
        conn.send(self.settings)
        kind, info = "lost", f"no answer within {CONNECT_TIMEOUT_S:.0f} s"
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while time.monotonic() < deadline and not self._closing.is_set():
            if conn.poll(0.5):
                try:
                    kind, info = conn.recv()
                except (EOFError, OSError):
                    kind, info = "lost", "the Ray driver process ended while joining the cluster"
                break
        if kind == "connected":
            self._health = {"status": "STARTING", "replicas": {}}
            return conn, info
        self._bridge.kill()
        self._bridge.wait()
        conn.close()
        return None, info

    def _supervise(self) -> None:
        """Relay the bridge's messages; when it ends, fail what it was running and join the cluster again."""
        while True:
            reason = self._pump(self._conn)
            try:
                self._bridge.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._bridge.kill()
                self._bridge.wait()
            with self._send_lock:
                self._conn.close()
                self._conn = None
            self._lost(reason or self._why_the_bridge_ended())
            while self._conn is None:
                if self._closing.wait(RECONNECT_S):
                    return
                if self.settings.ray_address != "local" and not _listening(self._gcs):
                    continue  # joining a cluster that is not there would hang in ray.init for minutes
                conn, info = self._launch()
                if conn is None:
                    self._health = {"status": "UNHEALTHY", "error": f"{info}; trying again every {RECONNECT_S:.0f} s"}
                    continue
                with self._send_lock:
                    self._conn = conn
                log.info("Ray cluster at %s joined again", self.settings.ray_address)

    def _pump(self, conn) -> str | None:
        """Relay the bridge's messages until it ends; why it ended, if it said."""
        reason = None
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return reason
            if message[0] == "event":
                self._deliver(message[1], message[2])
            elif message[0] == "health":
                self._health = message[1]
            elif message[0] == "lost":  # the bridge exits next; until then nothing reaches the cluster
                reason = self._lost_because = message[1]
                self._health = {"status": "UNHEALTHY", "error": reason}

    def _why_the_bridge_ended(self) -> str:
        # Ray may end its driver before the driver notices the cluster is gone: the cluster's port tells.
        if self.settings.ray_address != "local" and not _listening(self._gcs):
            return f"the Ray cluster at {self.settings.ray_address} ({self._gcs}) stopped answering"
        return f"the Ray driver process ended (exit status {self._bridge.returncode})"

    def _lost(self, reason: str) -> None:
        if self._closing.is_set():
            reason = "the server is shutting down"
        else:
            log.error("Ray cluster lost: %s", reason)
        self._health = {"status": "UNHEALTHY", "error": f"{reason}; trying again every {RECONNECT_S:.0f} s"}
        self._lost_because = reason
        for run_id in list(self._runs):
            self._end(
                run_id,
                Failed(
                    f"The engine stopped while this prediction was running: {reason}. Create it "
                    "again once /health-check says READY.",
                    kind="internal",
                ),
            )

    def _deliver(self, run_id: int, event) -> None:
        run = self._runs.get(run_id)
        if run is not None:
            run.emit(event)
            if isinstance(event, TERMINAL):
                self._runs.pop(run_id, None)

    def _end(self, run_id: int, event: Failed) -> None:
        run = self._runs.pop(run_id, None)
        if run is not None:
            run.emit(event)

    def _send(self, message: tuple) -> bool:
        with self._send_lock:
            if self._conn is None:
                return False
            try:
                self._conn.send(message)
                return True
            except (OSError, ValueError):
                return False

    def _unreachable(self) -> str:
        return UNREACHABLE.format(
            address=self.settings.ray_address, reason=self._lost_because or "the Ray driver process is not running"
        )


def _listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        return True
    except OSError:
        return False


def bridge_environment(address: str, environ) -> dict[str, str]:
    """The Ray driver's environment. For a cluster it starts itself (`local`): token authentication (Ray's gRPC
    servers listen on every interface; with a token no one else can submit work to it; RAY_AUTH_MODE=disabled
    still wins), with a token of its own where Ray would find none (RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH
    names, ~/.ray/auth_token): on a machine where Ray never ran, its GCS server would otherwise die for want of
    one. Set before the driver imports Ray, which reads them then."""
    env = dict(environ)
    if address == "local":
        env.setdefault("RAY_AUTH_MODE", "token")
        if not (env.get("RAY_AUTH_TOKEN_PATH") or (Path.home() / ".ray" / "auth_token").is_file()):
            env.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    return env
