"""The request body limit, enforced on the stream as the body arrives.

A declared `Content-Length` over the limit is refused before a byte of the body is read; a chunked
body (no Content-Length) is counted as it arrives, and the read that passes the limit raises
`BodyTooLarge`, which app.py answers with a 413. Whoever reads the body (JSON parsing, the multipart
parser) therefore never holds more than the limit. The server reads and discards the rest of an
oversized body after the 413, so the client can read its answer instead of seeing the connection
reset under it.

A client that goes away before its body has all arrived (or whose body came too slowly, connections.py) leaves the
app nothing to answer: its ClientDisconnect ends the request with one log line, not as an unexpected error.
"""

from __future__ import annotations

import logging

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"Request bodies are limited to {limit} bytes (MUSICGEN_MAX_BODY_BYTES).")
        self.limit = limit


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class BodyLimit:
    """ASGI middleware: `receive` raises BodyTooLarge once the body passes `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _declared_length(scope)
        received, gone = 0, False

        async def limited_receive() -> Message:
            nonlocal received, gone
            if declared is not None and declared > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            gone = message["type"] == "http.disconnect"
            return message

        try:
            await self.app(scope, limited_receive, send)
        except ClientDisconnect:
            if not gone:
                raise
            log.info("%s %s: the client went away after %d bytes of its body", scope["method"], scope["path"], received)
