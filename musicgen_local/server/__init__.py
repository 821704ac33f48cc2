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


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 5000, engine=None) -> None:
    """Blocking: load the engine (unless one is given), then serve /v1 until interrupted. The first
    SIGTERM or Ctrl-C drains (creates answer 503, everything else keeps working, running predictions
    get MUSICGEN_SHUTDOWN_GRACE seconds to finish); a second one stops at once."""
    import uvicorn

    from ..engine import load_engine

    if not settings.api_token and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("Serving on %s without MUSICGEN_API_TOKEN: anyone who can reach this port can use it.", host)
    engine = engine or load_engine(settings)
    app = create_app(settings, engine)

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if self.should_exit or not app.state.dispatcher.accepting:
                return super().handle_exit(sig, frame)
            log.info("Draining: no new predictions; running ones get %.0f s to finish.", settings.shutdown_grace)
            threading.Thread(target=self._drain_then_exit, daemon=True).start()

        def _drain_then_exit(self) -> None:
            app.state.dispatcher.drain(settings.shutdown_grace)
            self.should_exit = True

    log.info("Serving meta/musicgen at http://%s:%d/v1 (data in %s)", host, port, settings.data_dir)
    try:
        DrainingServer(uvicorn.Config(app, host=host, port=port, log_level="info")).run()
    finally:
        engine.close()
