"""`EventQueue`: the Run every engine hands out (in-process, Ray, fake): one request's events, handed from the
engine's threads to its one consumer.

The engine side never blocks on the consumer: `emit` appends and returns. A consumer that falls
behind sees fewer `Progress` events (a newer one replaces an unread one), never fewer of the others.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator

from .api import TERMINAL, Event, Progress


class EventQueue:
    def __init__(self, on_cancel: Callable[[EventQueue], None] = lambda run: None) -> None:
        self._events: deque[Event] = deque()
        self._ready = threading.Condition()
        self._ended = False  # a terminal event was emitted
        self._on_cancel = on_cancel
        self.canceled = threading.Event()  # read by the engine's stages

    # ---------------------------------------------------------------------------------- engine side

    def emit(self, event: Event) -> bool:
        """Queue an event; False (and dropped) once a terminal event was queued."""
        with self._ready:
            if self._ended:
                return False
            if isinstance(event, Progress) and self._events and isinstance(self._events[-1], Progress):
                self._events[-1] = event
            else:
                self._events.append(event)
            self._ended = isinstance(event, TERMINAL)
            self._ready.notify_all()
            return True

    @property
    def ended(self) -> bool:
        return self._ended

    # ---------------------------------------------------------------------------------- consumer side

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event, waiting up to `timeout` seconds (None: forever); None on timeout."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._events, timeout):
                return None
            return self._events.popleft()

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self.next_event()
            yield event
            if isinstance(event, TERMINAL):
                return

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            event = self.next_event(0)
            if event is None:
                event = await asyncio.to_thread(self.next_event, 0.5)
                if event is None:
                    continue
            yield event
            if isinstance(event, TERMINAL):
                return

    def cancel(self) -> None:
        if not self.canceled.is_set():
            self.canceled.set()
            self._on_cancel(self)
