"""A deadline for a request's head: its request line and headers must arrive within
MUSICGEN_HEADER_TIMEOUT seconds of the connection opening, or of the previous response on a
keep-alive connection; otherwise the connection is closed.

uvicorn closes a keep-alive connection that sends nothing after a response, but not one that opens
and sends nothing, or sends its headers a byte at a time: hundreds of those (slowloris) hold every
file descriptor the process has, and then no one else gets in. Bodies are not timed here: an upload
on a slow link may rightly take minutes, and the body's size is bounded by MUSICGEN_MAX_BODY_BYTES.
"""

from __future__ import annotations

import asyncio
import logging
import resource

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)


def head_deadline_protocol(timeout_s: float) -> type[HttpToolsProtocol]:
    class HeadDeadline(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            waiting = bool(self.pipeline)  # a pipelined request already sent its head
            super().on_response_complete()
            if not waiting and not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _too_slow(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()

    return HeadDeadline


def raise_open_files_limit() -> int:
    """The soft limit on open files up to the hard one (often 1024 of 1048576): every connection is one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open files limit from %d: %s", soft, exc)
    return soft
