"""How the process logs: readable text (the default), or with MUSICGEN_LOG_FORMAT=json one JSON object per
line for a collector (Loki, Elasticsearch, CloudWatch): time, level, logger, message, and the prediction's id
and model when the line is about one.

A run's id and model come from `about(run_id, model)`, which the dispatcher enters for the thread that
consumes that run's events, so every line logged there carries them without each call passing them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

FORMATS = ("text", "json")
TEXT = "%(levelname)s %(name)s: %(message)s"
_RUN: ContextVar[tuple[str, str, str] | None] = ContextVar("musicgen_run", default=None)


@contextmanager
def about(kind: str, run_id: str, model: str) -> Iterator[None]:
    """Lines logged inside are about this run (`kind`: prediction or training)."""
    token = _RUN.set((kind, run_id, model))
    try:
        yield
    finally:
        _RUN.reset(token)


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        run = _RUN.get()
        if run is not None:
            kind, run_id, model = run
            out[f"{kind}_id"], out["model"] = run_id, model
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(fmt: str = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines() if fmt == "json" else logging.Formatter(TEXT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
