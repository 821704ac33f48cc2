"""The Replicate v1 API on local hardware (`musicgen-local serve`).

`create_app(settings, engine)` builds the FastAPI app; `serve(settings, host, port)` loads the real
engine and runs it under uvicorn. Nothing here imports torch except through `load_engine`.
"""

from __future__ import annotations

import logging

from ..settings import Settings
from .app import create_app

__all__ = ["create_app", "serve"]
log = logging.getLogger(__name__)


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 5000) -> None:
    """Blocking: load the engine, then serve /v1 until interrupted."""
    import uvicorn

    from ..engine import load_engine

    if not settings.api_token and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("Serving on %s without MUSICGEN_API_TOKEN: anyone who can reach this port can use it.", host)
    app = create_app(settings, load_engine(settings))
    log.info("Serving meta/musicgen at http://%s:%d/v1 (data in %s)", host, port, settings.data_dir)
    uvicorn.run(app, host=host, port=port, log_level="info")
