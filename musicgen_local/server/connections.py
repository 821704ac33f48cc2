"""What one connection may hold: deadlines for a request's head and body, and a cap on the connections one client
address keeps open.

- The head (request line and headers) must arrive within MUSICGEN_HEADER_TIMEOUT seconds of the connection opening,
  or of the previous response on a keep-alive connection; otherwise the connection is closed. uvicorn closes a
  keep-alive connection that sends nothing after a response, but not one that opens and sends nothing, or sends its
  headers a byte at a time (slowloris).
- The body must keep coming: MUSICGEN_BODY_TIMEOUT seconds, plus one second for every MUSICGEN_BODY_MIN_RATE bytes
  that arrived. An upload on a slow link passes (a 100 MB file at 64 kbit/s), a body trickled a byte at a time is
  answered 408 and closed. While the server itself holds the body back (the app reads slower than it arrives, or has
  not yet asked for a body sent with `Expect: 100-continue`) the clock starts again.
- One client address (an IPv6 client's /64, which one host usually holds whole) keeps at most
  MUSICGEN_MAX_CONNECTIONS_PER_CLIENT connections open; a request on a connection past that is answered 429 with
  Retry-After and the connection closed, once its head has arrived (under the head deadline). A 429 rather than a
  silent close: an honest client with too many streams open learns why, and the refused connection lives only as
  long as its head takes. A warning is logged when an address first passes the cap, and not again until it is back
  under.

Without these, a few hundred connections trickling their heads or bodies hold every file descriptor the process has,
and then `/health-check` and creates are closed unanswered.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import resource
from collections import Counter
from dataclasses import dataclass

from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..settings import Settings

log = logging.getLogger(__name__)
RETRY_AFTER_S = 1
_TOO_SLOW = json.dumps(
    {
        "title": "Request timeout",
        "detail": "The request body came too slowly (MUSICGEN_BODY_TIMEOUT, MUSICGEN_BODY_MIN_RATE).",
        "status": 408,
    }
).encode()
REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/problem+json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_TOO_SLOW), _TOO_SLOW)
)


@dataclass(frozen=True)
class Limits:
    head_s: float = 10.0
    body_s: float = 30.0
    body_min_rate: float = 8192.0  # bytes per second
    per_client: int = 100  # 0: no cap

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            settings.header_timeout,
            settings.body_timeout,
            settings.body_min_rate,
            settings.max_connections_per_client,
        )


def client_key(peer: object) -> str | None:
    """Who a connection counts against: its IPv4 address, or its IPv6 address's /64 (None: not an IP socket)."""
    if not isinstance(peer, tuple) or not peer:
        return None
    try:
        address = ipaddress.ip_address(peer[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address.ipv4_mapped or address) if address.version == 6 else str(address)


def too_many_connections(key: str, cap: int):
    """The ASGI app a request past the cap gets instead of ours: a 429 problem, and the connection closed."""
    body = json.dumps(
        {
            "title": "Too many requests",
            "detail": f"{key} has more than {cap} connections open to this server "
            f"(MUSICGEN_MAX_CONNECTIONS_PER_CLIENT); close some, or retry after {RETRY_AFTER_S} s.",
            "status": 429,
        }
    ).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER_S).encode()),
        (b"connection", b"close"),
    ]

    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return refuse


class ClientCounts:
    """Open connections per client key, in the event loop's thread (no lock: only its callbacks touch it)."""

    def __init__(self, cap: int) -> None:
        self.cap, self.open, self.warned = cap, Counter[str](), set[str]()

    def opened(self, key: str | None) -> bool:
        """Counts a connection; whether it is past the cap."""
        if key is None:
            return False
        self.open[key] += 1
        over = bool(self.cap) and self.open[key] > self.cap
        if over and key not in self.warned:
            self.warned.add(key)
            log.warning(
                "%s has more than %d connections open (MUSICGEN_MAX_CONNECTIONS_PER_CLIENT): "
                "requests on the connections past that are answered 429",
                key,
                self.cap,
            )
        return over

    def closed(self, key: str | None) -> None:
        if key is None:
            return
        self.open[key] -= 1
        if self.open[key] <= 0:
            del self.open[key]
        if self.open[key] <= self.cap // 2:
            self.warned.discard(key)


def connection_protocol(limits: Limits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the limits above; one ClientCounts for every connection of the server."""
    counts = ClientCounts(limits.per_client)

    class Guarded(_Deadlines):
        _limits = limits

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._key = client_key(self.client)
            if counts.opened(self._key):
                self.app = too_many_connections(self._key or "", limits.per_client)

        def connection_lost(self, exc: Exception | None) -> None:
            counts.closed(self._key)
            super().connection_lost(exc)

    return Guarded


class _Deadlines(HttpToolsProtocol):
    """The head and body deadlines of one connection (a subclass sets `_limits`)."""

    _limits: Limits
    _key: str | None = None
    _head_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _body_since = 0.0
    _body_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head()

    def on_headers_complete(self) -> None:
        self._head_timer = _cancel(self._head_timer)
        super().on_headers_complete()
        self._start_body_clock()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._body_timer = _cancel(self._body_timer)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        waiting = bool(self.pipeline)  # a pipelined request already sent its head
        super().on_response_complete()
        if not waiting and not self.transport.is_closing():
            self._arm_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_timer = _cancel(self._head_timer)
        self._body_timer = _cancel(self._body_timer)
        super().connection_lost(exc)

    def _arm_head(self) -> None:
        _cancel(self._head_timer)
        self._head_timer = self.loop.call_later(self._limits.head_s, self._head_too_slow)

    def _head_too_slow(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def _start_body_clock(self) -> None:
        _cancel(self._body_timer)
        self._body_since, self._body_bytes = self.loop.time(), 0
        self._body_timer = self.loop.call_later(self._limits.body_s, self._check_body)

    def _check_body(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.cycle is None:
            return
        if self.flow.read_paused or self.cycle.waiting_for_100_continue:  # held back by us, not by the client
            return self._start_body_clock()
        allowed = self._limits.body_s + self._body_bytes / self._limits.body_min_rate
        taken = self.loop.time() - self._body_since
        if taken < allowed:
            self._body_timer = self.loop.call_later(allowed - taken, self._check_body)
            return
        log.info(
            "closed a connection from %s: its request body came too slowly (%d bytes in %.0f s)",
            self._key,
            self._body_bytes,
            taken,
        )
        if not self.cycle.response_started:
            self.cycle.disconnected = True  # the app reads a disconnect; whatever it answers is dropped
            self.cycle.message_event.set()
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()


def _cancel(timer: asyncio.TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()
    return None


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
