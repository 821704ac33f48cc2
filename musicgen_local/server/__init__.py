"""The Replicate v1 API on local hardware (`musicgen-local serve`).

`create_app(settings, engine)` builds the FastAPI app; `serve(settings, host, port)` loads the real
engine and runs it under uvicorn. Nothing here imports torch except through `load_engine`.
"""

from __future__ import annotations

import logging
import threading

from ..settings import Settings
from .app import create_app

__all__ = ["create_app", "serve"]
log = logging.getLogger(__name__)


EXIT_DEVICE_LOST = 3  # the exit status after a device failed for good: restart me


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 5000, engine=None) -> int:
    """Blocking: load the engine (unless one is given), then serve /v1 until interrupted. The first
    SIGTERM or Ctrl-C drains (creates answer 503, everything else keeps working, running predictions
    get MUSICGEN_SHUTDOWN_GRACE seconds to finish); a second one stops at once.

    Returns the exit status: 0, or EXIT_DEVICE_LOST when a device failed for good (the engine's `lost`
    event). Then the server drains as for SIGTERM, which is quick since the engine has ended every run
    it held, sends the webhooks it can, and stops, so that its supervisor starts a fresh process; the
    predictions that had not started run then."""
    import uvicorn

    from ..engine import load_engine
    from .connections import Limits, connection_protocol, raise_open_files_limit

    if not settings.api_token and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("Serving on %s without MUSICGEN_API_TOKEN: anyone who can reach this port can use it.", host)
    engine = engine or load_engine(settings)
    app = create_app(settings, engine)
    raise_open_files_limit()
    # With JSON logs, uvicorn's own loggers go through the root's handler instead of its text ones.
    plain = {} if settings.log_format == "text" else {"log_config": None}
    config = uvicorn.Config(
        app, host=host, port=port, log_level="info", http=connection_protocol(Limits.of(settings)), **plain
    )
    server = _draining_server(uvicorn.Server, app, settings)(config)
    status = [0]
    if getattr(engine, "lost", None) is not None:
        threading.Thread(
            target=_exit_when_lost, args=(engine, app, server, status), name="device-lost", daemon=True
        ).start()
    log.info("Serving meta/musicgen at http://%s:%d/v1 (data in %s)", host, port, settings.data_dir)
    try:
        server.run()
    finally:
        engine.close()
    return status[0]


def _draining_server(base, app, settings: Settings):
    """uvicorn's Server whose first SIGTERM or Ctrl-C drains every kind of run before it stops."""

    class DrainingServer(base):
        def handle_exit(self, sig, frame) -> None:
            if self.should_exit or not app.state.runs.accepting:
                return super().handle_exit(sig, frame)
            log.info(
                "Draining: no new predictions or trainings; running predictions get %.0f s to finish, "
                "trainings stop at their last checkpoint.",
                settings.shutdown_grace,
            )
            threading.Thread(target=self._drain_then_exit, daemon=True).start()

        def _drain_then_exit(self) -> None:
            app.state.runs.drain()
            self.should_exit = True

    return DrainingServer


def _exit_when_lost(engine, app, server, status: list[int]) -> None:
    """Once a device failed for good: drain every kind (and its webhooks), then stop with EXIT_DEVICE_LOST."""
    engine.lost.wait()
    status[0] = EXIT_DEVICE_LOST
    log.critical(
        "A device failed for good (%s). Finishing what can be answered, then exiting with status "
        "%d so that the server is restarted.",
        engine.health().get("error", ""),
        EXIT_DEVICE_LOST,
    )
    app.state.runs.drain()
    app.state.runs.drain_webhooks(timeout=10)
    server.should_exit = True
