"""The Ray driver: a child process of the API server that joins (or starts) the cluster, deploys the
engine replicas and relays requests and their events over a pipe.

Why a separate process: Ray ends a driver process that loses its cluster for a minute, and the
API must keep answering when the cluster goes away. So the API process never imports ray; this
process does, and when the cluster is gone it says so and exits (`RayEngine` starts a new one).
Run as `python -m musicgen_local.engine.ray.bridge FD` by `RayEngine`.

Messages to the API: ("connected", info), ("health", dict), ("event", run_id, Event),
("lost", reason). From the API: ("submit", run_id, Request, stream), ("train", run_id, TrainingRequest),
("cancel", run_id), ("close",).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import mimetypes
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import RequestCancelledError

from ...errors import UserError
from ...settings import Settings
from ..api import TERMINAL, Audio, Canceled, Event, Failed, Log, Request, Started
from . import deployment

log = logging.getLogger(__name__)
PROBE_S = 1.0  # how often the cluster is checked
LOST_AFTER = 3  # failed checks in a row before the cluster counts as gone
RETRY_START_S = 300.0  # a re-run must reach a replica within this (a replacement replica warms up first)
REPLICA_DIED = (
    "The engine replica running this prediction stopped ({reason}); running it again from the start "
    "on another replica (same seed, same audio)."
)
DIED_TWICE = (
    "The engine replica running this prediction stopped ({reason}), and so did the one that ran it "
    "again: it was not run a third time. Check the replicas' logs (`ray logs`), then create it again."
)
NO_REPLICA = (
    "The engine replica running this prediction stopped ({reason}), and no other replica took it up "
    "within {timeout:.0f} s. Check `serve status` on the Ray cluster, then create it again."
)


@dataclass(eq=False)
class Flight:
    """One run on the cluster: the response of its current attempt, and whether it was canceled."""

    request: Request
    stream: bool
    response: Any = None
    canceled: bool = False
    started: bool = False  # Started went to the API
    segments: int = 0  # Audio segments that went to the API


class Bridge:
    def __init__(self, conn, settings: Settings) -> None:
        self.conn, self.settings = conn, settings
        self.flights: dict[int, Flight] = {}
        self.handle = None
        self.deployed = asyncio.Event()
        self.deploy_error: str | None = None

    # ---------------------------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        try:
            plan = self._connect()  # in the main thread, where Ray wants to install its signal handlers
        except Exception as exc:  # noqa: BLE001 - any failure to join is reported, with Ray's own words
            self._send("lost", f"could not join the Ray cluster ({type(exc).__name__}: {exc})")
            return
        self._send("connected", {"capacity": plan.capacity, "gcs": self.gcs, "plan": asdict(plan)})
        self.commands: asyncio.Queue = asyncio.Queue()
        threading.Thread(target=self._read, args=(asyncio.get_running_loop(),), daemon=True).start()
        deploying = asyncio.create_task(self._deploy(plan))
        watching = asyncio.create_task(self._watch())
        while (command := await self.commands.get()) not in (None, ("close",), ("lost",)):
            self._command(command)
        deploying.cancel()
        watching.cancel()
        if command != ("lost",):
            await asyncio.to_thread(self._shut_down)

    def _connect(self) -> deployment.ReplicaPlan:
        address = self.settings.ray_address
        package = str(Path(__file__).resolve().parents[2])  # the replicas run this very code, on every node
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "runtime_env": {"py_modules": [package]}}
        if address == "local":  # token authentication set up by the API process (client.bridge_environment)
            ray.init(include_dashboard=False, **kwargs)
        else:
            ray.init(address=address, **kwargs)
        self.gcs = ray.get_runtime_context().gcs_address
        # Lives as long as this driver; a new driver makes a new one (get_if_exists: one at a time).
        self.board = deployment.HealthBoard.options(
            name=deployment.BOARD, namespace=deployment.BOARD_NAMESPACE, get_if_exists=True
        ).remote()
        return deployment.plan(self.settings, ray.cluster_resources())

    async def _deploy(self, plan: deployment.ReplicaPlan) -> None:
        def deploy():
            serve.start(proxy_location="Disabled")  # no HTTP proxy: the API server is the only front door
            return serve.run(deployment.application(self.settings, plan), name=deployment.APP, route_prefix=None)

        try:
            self.handle = await asyncio.to_thread(deploy)
        except Exception as exc:  # noqa: BLE001 - e.g. a replica that cannot start: the health says why
            log.exception("deploying the engine replicas failed")
            self.deploy_error = f"deploying the engine replicas failed: {exc}"
            return
        self.deployed.set()

    def _shut_down(self) -> None:
        try:
            serve.delete(deployment.APP)  # stopping the server frees the replicas (and their GPUs)
        except Exception:  # noqa: BLE001 - shutting down anyway
            log.warning("could not delete the Serve application %r", deployment.APP, exc_info=True)
        ray.shutdown()  # `local`: stops the cluster this process started

    # ---------------------------------------------------------------------------------- pipe

    def _send(self, *message) -> None:
        try:
            self.conn.send(message)
        except (OSError, ValueError):  # the API process is gone: nobody to tell
            pass

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                command = self.conn.recv()
            except (EOFError, OSError):
                command = None  # the API process went away
            loop.call_soon_threadsafe(self.commands.put_nowait, command)
            if command is None:
                return

    def _command(self, command: tuple) -> None:
        if command[0] == "submit":
            _, run_id, request, stream = command
            self.flights[run_id] = Flight(request, stream)
            asyncio.create_task(self._fly(run_id))
        elif command[0] == "train":
            _, run_id, request = command
            self.flights[run_id] = Flight(request, False)
            asyncio.create_task(self._train(run_id))
        elif command[0] == "cancel":
            flight = self.flights.get(command[1])
            if flight is not None:
                flight.canceled = True
                if flight.response is not None:
                    flight.response.cancel()

    # ---------------------------------------------------------------------------------- runs

    async def _fly(self, run_id: int) -> None:
        flight = self.flights[run_id]
        try:
            flight.request = await asyncio.to_thread(inline_input, flight.request)
            await self.deployed.wait()
            await self._attempts(run_id, flight)
        except UserError as exc:
            self._send("event", run_id, Failed(str(exc)))
        except Exception as exc:  # noqa: BLE001 - a bug or Ray's: this run fails with what happened
            log.exception("run %d failed", run_id)
            self._send(
                "event",
                run_id,
                Failed(
                    f"The Ray cluster could not run this prediction ({type(exc).__name__}: {exc}).", kind="internal"
                ),
            )
        finally:
            self.flights.pop(run_id, None)

    async def _train(self, run_id: int) -> None:
        """A training on one replica (the one the router picks). Its paths (dataset, work folder, weights)
        are the API server's: the replicas must share its file system (a local cluster, or a shared
        volume). If the replica dies, the training fails; its checkpoints stay in its work folder."""
        flight = self.flights[run_id]
        try:
            await self.deployed.wait()
            flight.response = self.handle.options(stream=True).train.remote(flight.request)
            if not await self._relay(run_id, flight.response, first_within=None):
                raise RuntimeError("the replica's stream ended without a result")
        except RequestCancelledError:
            self._send("event", run_id, Canceled())
        except Exception as exc:  # noqa: BLE001 - the replica died, or Ray failed: this training fails
            log.exception("training %d failed", run_id)
            self._send(
                "event",
                run_id,
                Failed(
                    f"The Ray replica running this training stopped ({_why(exc)}). Create the training again.",
                    kind="internal",
                ),
            )
        finally:
            self.flights.pop(run_id, None)

    async def _attempts(self, run_id: int, flight: Flight) -> None:
        """Run it; when its replica dies, run it once more from the start (its seed is fixed)."""
        died = None
        for attempt in (1, 2):
            if flight.canceled:
                return self._send("event", run_id, Canceled())
            options = self.handle.options(multiplexed_model_id=flight.request.model_version, stream=True)
            flight.response = options.generate.remote(flight.request, flight.stream)
            try:
                if await self._relay(run_id, flight.response, first_within=RETRY_START_S if died else None):
                    return
                raise RuntimeError("the replica's stream ended without a result")
            except RequestCancelledError:
                return self._send("event", run_id, Canceled())
            except RayActorError as exc:
                died = _why(exc)
                log.warning("run %d: replica died (%s), attempt %d", run_id, died, attempt)
                if attempt == 1 and not flight.canceled:
                    self._send("event", run_id, Log(REPLICA_DIED.format(reason=died)))
            except TimeoutError:
                flight.response.cancel()
                message = NO_REPLICA.format(reason=died, timeout=RETRY_START_S)
                return self._send("event", run_id, Failed(message, kind="internal"))
        if flight.canceled:
            return self._send("event", run_id, Canceled())
        self._send("event", run_id, Failed(DIED_TWICE.format(reason=died), kind="internal"))

    async def _relay(self, run_id: int, response, first_within: float | None) -> bool:
        """Forward the events of one attempt; True once a terminal event went through."""
        stream = response.__aiter__()
        if first_within:  # a re-run: the replica's first event says one took it up
            try:
                self._forward(run_id, await asyncio.wait_for(stream.__anext__(), first_within))
            except StopAsyncIteration:
                return False
        async for event in stream:
            self._forward(run_id, event)
            if isinstance(event, TERMINAL):
                return True
        return False

    def _forward(self, run_id: int, event: Event) -> None:
        """Pass an event on, except what a first attempt already sent: its Started, and its audio segments
        (a re-run has the same seed, so its segments are the same)."""
        flight = self.flights[run_id]
        if isinstance(event, Started):
            if flight.started:
                return
            flight.started = True
        elif isinstance(event, Audio):
            if event.index < flight.segments:
                return
            flight.segments = event.index + 1
        self._send("event", run_id, event)

    # ---------------------------------------------------------------------------------- health

    async def _watch(self) -> None:
        """Until the cluster is gone: its health every PROBE_S; then say so (the process then exits)."""
        failures, status_call = 0, None
        while failures < LOST_AFTER:
            failures = 0 if await _reachable(self.gcs) else failures + 1
            if status_call is None or status_call.done():
                if status_call is not None and status_call.exception() is None:
                    self._send("health", status_call.result())
                status_call = asyncio.ensure_future(asyncio.to_thread(self._status))
            await asyncio.sleep(PROBE_S)
        reason = f"the Ray cluster at {self.settings.ray_address} ({self.gcs}) stopped answering"
        for run_id in list(self.flights):
            self._send(
                "event",
                run_id,
                Failed(
                    f"{_capital(reason)} while this prediction was running; create it "
                    "again once /health-check says READY.",
                    kind="internal",
                ),
            )
        self._send("lost", reason)
        self.commands.put_nowait(("lost",))

    def _status(self) -> dict[str, Any]:
        if self.deploy_error:
            return {"status": "UNHEALTHY", "error": self.deploy_error}
        app = serve.status().applications.get(deployment.APP)
        if app is None or not self.deployed.is_set():
            return {"status": "STARTING", "replicas": {}}
        replicas: dict[str, int] = {}
        for serve_deployment in app.deployments.values():
            for state, count in serve_deployment.replica_states.items():
                replicas[_name(state)] = replicas.get(_name(state), 0) + count
        if replicas.get("RUNNING"):  # some serve, maybe while others are replaced or added
            status = "READY"
        else:
            status = "STARTING" if _name(app.status) in ("NOT_STARTED", "DEPLOYING") else "UNHEALTHY"
        return {
            "status": status,
            "application": _name(app.status),
            "replicas": replicas,
            "replica_health": self._replica_health(),
        }

    def _replica_health(self) -> dict[str, Any]:
        """Each replica's engine health as it last posted it (see deployment.HealthBoard); {} when unknown."""
        try:
            return ray.get(self.board.read.remote(), timeout=5)
        except Exception:  # noqa: BLE001 - metrics are not worth failing the health probe for
            log.warning("could not read the replicas' health board", exc_info=True)
            return {}


def inline_input(request: Request) -> Request:
    """A local `input_audio` (a file uploaded to the API server) as a data: URI: the replica that
    reads it may be on another machine."""
    ref = getattr(request, "input_audio", None)  # a LoopRequest has none
    if not ref or ref.startswith(deployment.REMOTE_INPUTS):
        return request
    path = Path(ref.removeprefix("file://")).expanduser()
    if not path.is_file():
        raise UserError(f"`input_audio` file not found: {ref}")
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return replace(request, input_audio=f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}")


async def _reachable(address: str, timeout: float = 2.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


def _why(exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return first.rstrip(".")


def _name(state: Any) -> str:
    return str(getattr(state, "value", state))


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def main(fd: int) -> None:
    """The child process's entry point: its end of the pipe is file descriptor `fd`; the first
    message is the Settings. Exits without Ray's own shutdown once the cluster is gone (that would
    wait on the cluster)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s ray-bridge: %(message)s")
    started = time.monotonic()
    conn = Connection(fd)
    try:
        # Not asyncio.run: its clean-up waits for threads that may be stuck on a cluster that is gone.
        asyncio.new_event_loop().run_until_complete(Bridge(conn, conn.recv()).run())
    finally:
        log.info("Ray bridge exiting after %.0f s", time.monotonic() - started)
        conn.close()
        os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]))
