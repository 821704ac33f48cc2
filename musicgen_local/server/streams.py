"""Each prediction's stream of Server-Sent Events: what `urls.stream` serves (see stream_routes.py).

A prediction's `EventLog` is a list of entries, numbered from 1 (the SSE `id`), of Replicate's four
event names only: `output` (an audio segment, as the name of its file), `logs` (one line), `error`
(a message) and `done` (`{}`, or the reason it ended otherwise). The dispatcher's listener
(`StreamHub.on_event`, on each prediction's consumer thread) appends to it: a `Log` event for each
line the prediction logs, `Audio` for each segment, and its end; any number of followers
(coroutines on the server's event loop) read it from wherever they are, so a client that reconnects
with `Last-Event-ID` gets exactly what it missed. When the prediction ends, its log is written to
its data directory and dropped from memory: a stream opened later replays that file. A follower
holds no thread and no lock while it waits; one that goes away leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path

from ..engine.api import TERMINAL, Audio, Event, Log
from .prediction import Prediction
from .store import Store

log = logging.getLogger(__name__)
LOG_FILE = "stream.jsonl"  # in the prediction's data directory, once it ended
SEGMENTS = "stream"  # the prediction's segment files: <data dir>/stream/00000.wav, ...
ENDINGS = {"succeeded": {}, "canceled": {"reason": "canceled"}, "failed": {"reason": "error"}}


def segment_name(index: int) -> str:
    return f"{index:05d}.wav"


@dataclass(frozen=True)
class Entry:
    id: int
    event: str  # output | logs | error | done
    data: str  # output: the segment's file name (rendered as a URL per follower); done: JSON


class EventLog:
    """One prediction's entries: appended (under its lock) from the dispatcher's threads, read from the event loop."""

    def __init__(self, entries: list[Entry] | None = None, closed: bool = False) -> None:
        self._entries = entries or []
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self.closed = closed

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def append(self, event: str, data: str) -> None:
        with self._lock:
            self._add(event, data)

    def close(self, pred: Prediction) -> bool:
        """End the log as the prediction ended; False when it was closed already."""
        with self._lock:
            if self.closed:
                return False
            if pred.status == "failed":
                self._add("error", pred.error or "The prediction failed.")
            self._add("done", json.dumps(ENDINGS[pred.status]))
            self.closed = True
            return True

    def _add(self, event: str, data: str) -> None:  # holding the lock
        if self.closed:
            return
        self._entries.append(Entry(len(self._entries) + 1, event, data))
        for loop, woken in self._waiters:
            loop.call_soon_threadsafe(woken.set)

    def since(self, after: int) -> tuple[list[Entry], bool]:
        """(entries after id `after`, whether the log is complete)."""
        with self._lock:
            return self._entries[max(after, 0) :], self.closed

    async def wait(self, after: int, timeout: float) -> None:
        """Until there is an entry after `after`, the log closes, or `timeout` seconds pass."""
        loop, woken = asyncio.get_running_loop(), asyncio.Event()
        with self._lock:
            if len(self._entries) > after or self.closed:
                return
            waiter = (loop, woken)
            self._waiters.append(waiter)
        try:
            await asyncio.wait_for(woken.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters.remove(waiter)

    def dump(self) -> str:
        with self._lock:
            return "".join(json.dumps(asdict(e)) + "\n" for e in self._entries)

    @classmethod
    def load(cls, path: Path) -> EventLog:
        entries = [Entry(**json.loads(line)) for line in path.read_text().splitlines() if line]
        return cls(entries, closed=True)

    @classmethod
    def replay(cls, pred: Prediction) -> EventLog:
        """The log of a prediction that ended with no log kept (canceled before it started, or ended
        before streams existed): its logs, then its ending."""
        replayed = cls.seeded(pred)
        replayed.close(pred)
        return replayed

    @classmethod
    def seeded(cls, pred: Prediction) -> EventLog:
        """A new log that starts with the lines the prediction has logged so far (the dispatcher tells
        every later one as a Log event)."""
        log_ = cls()
        for line in pred.logs.splitlines():
            log_.append("logs", line)
        return log_


class StreamHub:
    """The event logs of the predictions not ended yet, and the followers reading them."""

    def __init__(self, store: Store, ping_s: float = 10.0) -> None:
        self.store = store
        self.ping_s = ping_s  # an SSE comment after this long without an event keeps proxies and clients reading
        self._live: dict[str, EventLog] = {}
        self._preds: dict[str, Prediction] = {}  # the (live) prediction each live log follows
        self._lock = threading.Lock()
        self.followers = 0

    def stats(self) -> dict[str, int]:
        """Followers connected, those waiting for an event, and event logs held in memory."""
        with self._lock:
            waiting = sum(log_.waiting for log_ in self._live.values())
            return {"followers": self.followers, "waiting": waiting, "live_logs": len(self._live)}

    def segment_path(self, pred_id: str, name: str) -> Path:
        return self.store.prediction_dir(pred_id) / SEGMENTS / name

    def log_for(self, pred: Prediction) -> EventLog:
        """The prediction's log: live, else its file, else one rebuilt from the prediction."""
        with self._lock:
            if pred.id in self._live:
                return self._live[pred.id]
            path = self.store.prediction_dir(pred.id) / LOG_FILE
            if path.exists():
                return EventLog.load(path)
            if pred.done:
                return EventLog.replay(pred)
            self._live[pred.id], self._preds[pred.id] = EventLog.seeded(pred), pred
            return self._live[pred.id]

    # ---------------------------------------------------------------------------------- writers

    def on_event(self, pred: Prediction, event: Event) -> None:
        """The dispatcher's listener: never raises, so that streaming can never fail a prediction. A run's end
        comes through `finished`, not its last event (a prediction canceled before it started has none)."""
        if isinstance(event, TERMINAL):
            return
        try:
            log_ = self.log_for(pred)
            if isinstance(event, Log):
                for line in event.line.splitlines():
                    log_.append("logs", line)
            elif isinstance(event, Audio):
                name = segment_name(event.index)
                path = self.segment_path(pred.id, name)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(event.wav)
                log_.append("output", name)
        except Exception:  # noqa: BLE001 - a stream's trouble is logged; the prediction goes on
            log.exception("prediction %s: streaming %s failed", pred.id, type(event).__name__)

    def finished(self, pred: Prediction) -> None:
        """The dispatcher's hook when a prediction has ended, however it ended (a drain's hold has not)."""
        with self._lock:
            log_ = self._live.get(pred.id)
        if log_ is not None:
            try:
                self.end(pred, log_)
            except Exception:  # noqa: BLE001 - as in on_event
                log.exception("prediction %s: ending its stream failed", pred.id)

    def end(self, pred: Prediction, log_: EventLog) -> None:
        """Close the log, keep it as a file, and drop it from memory (whoever gets here first)."""
        if not log_.close(pred):
            return
        path = self.store.prediction_dir(pred.id) / LOG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(log_.dump())
        with self._lock:
            tmp.replace(path)
            if self._live.get(pred.id) is log_:
                del self._live[pred.id], self._preds[pred.id]

    # ---------------------------------------------------------------------------------- followers

    async def follow(self, pred: Prediction, after: int = 0) -> AsyncIterator[Entry | None]:
        """The entries after id `after`, as they come, up to `done`; None now and then as a keep-alive."""
        with self._lock:
            self.followers += 1
        try:
            log_ = self.log_for(pred)
            last_sent = time.monotonic()
            while True:
                entries, closed = log_.since(after)
                for entry in entries:
                    yield entry
                    after, last_sent = entry.id, time.monotonic()
                if entries:
                    continue
                if closed:
                    return
                await log_.wait(after, self.ping_s)  # woken by the next entry; `done` comes at the end
                if time.monotonic() - last_sent >= self.ping_s:
                    last_sent = time.monotonic()
                    yield None
        finally:
            with self._lock:
                self.followers -= 1
