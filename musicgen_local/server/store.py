"""Runs of one kind (predictions, or trainings), in the data folder's database plus a folder each.

Layout under the data directory:
  musicgen.sqlite3            runs (one JSON record per row, a table per kind), uploads (files.py), models and
                              versions (registry.py), `completed` webhooks not yet delivered
  predictions/<id>/out.wav    each prediction's output
  trainings/<id>/             each training's work folder (dataset pieces, checkpoints) and weights.tar
  files/<id>/<name>           uploads from POST /v1/files, and inputs given as data: URIs

Runs still unfinished live in memory (`_live`) and are written through on every state change, so progress
updates do not hit the disk 50 times a second; a restart finds the last state written. A write the disk refuses
(full) does not stop a run: its state stays in memory, a finished run leaves the queue all the same, and `flush`
(the app's sweeper) writes what is owed once there is room.

Reading never fails on what is stored: a row another version wrote, or one that holds text no response can
encode, is rendered as well as it can be (see `_load`). With a retention (MUSICGEN_RETENTION), finished runs'
files older than it are removed (all but what a run's record says to keep: a training's weights serve its version):
by the app's periodic `remove_expired`, and by every read that finds one due first.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..database import Database, StorageFailed
from .prediction import Prediction, now, stored_time
from .surrogates import scrub

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {kind} (id TEXT PRIMARY KEY, created_at TEXT NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS {kind}_created ON {kind} (created_at, id);
CREATE TABLE IF NOT EXISTS webhooks (msg_id TEXT PRIMARY KEY, kind TEXT NOT NULL, run_id TEXT NOT NULL,
                                     url TEXT NOT NULL, body BLOB NOT NULL, event TEXT NOT NULL);
"""
KINDS = ("predictions", "trainings")  # the tables of runs, each read as its own record class
UNREADABLE = "This {noun}'s stored record could not be read (it was written by another version?)."


def _stamp(t: datetime) -> str:
    """The stored `created_at`. In one zone, isoformat() strings sort as the times do (even when it drops
    zero microseconds: '+' sorts before '.'), so SQL compares them as text, on the index."""
    return t.astimezone(UTC).isoformat()


def _encode_cursor(kind: str, pred: Prediction) -> str:
    raw = f"{kind}|{_stamp(pred.created_at)}|{pred.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str, str]:
    """-> (kind 'next'|'prev', created_at, id); ValueError on anything malformed."""
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    kind, created, pid = raw.split("|")
    if kind not in ("next", "prev"):
        raise ValueError(kind)
    return kind, created, pid


def _field(name: str) -> str:
    """SQL for one key of a row's JSON record; NULL for a row that is not JSON (never an SQL error)."""
    return f"CASE WHEN json_valid(record) THEN json_extract(record, '$.{name}') END"


def _loads(text: str) -> Any:
    return scrub(json.loads(text))


class Store:
    def __init__(
        self,
        database: Database,
        data_dir: Path,
        retention_s: float | None = None,
        kind: str = "predictions",
        record: type[Prediction] = Prediction,
    ) -> None:
        """`kind`: "predictions", or "trainings" (read as `record`, a Prediction subclass), in the same database."""
        if kind not in KINDS:
            raise ValueError(kind)
        self.kind, self.record = kind, record
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.retention = timedelta(seconds=retention_s) if retention_s else None
        self._db = database
        self._db.create(_SCHEMA.format(kind=kind))
        self._lock = threading.Lock()
        self._live: dict[str, Prediction] = {}  # unfinished
        self._unsaved: dict[str, Prediction] = {}  # finished, their last state not written yet (a full disk)

    @property
    def noun(self) -> str:
        return self.kind[:-1]

    def unfinished(self) -> list[Prediction]:
        """Runs a previous process left queued or running, oldest first (read at start-up)."""
        rows = self._db.read(f"SELECT id, created_at, record FROM {self.kind} ORDER BY created_at, id")
        runs = [self._load(*row) for row in rows]  # an unreadable row loads as failed: done, not run again
        unfinished = [p for p in runs if not p.done]
        with self._lock:
            self._live.update((p.id, p) for p in unfinished)
        return unfinished

    def prediction_dir(self, pred_id: str) -> Path:
        return self.data_dir / self.kind / pred_id

    def add(self, pred: Prediction) -> None:
        """Raises StorageFailed, and then the run counts nowhere (not against MUSICGEN_MAX_QUEUE)."""
        with self._lock:
            self._write(pred)
            self._live[pred.id] = pred

    def save(self, pred: Prediction) -> None:
        """Write the run's state through. Never raises: a refused write leaves the state in memory (a finished run
        leaves the unfinished ones all the same) until `flush` writes it."""
        with self._lock:
            if pred.done:
                self._live.pop(pred.id, None)
            try:
                self._write(pred)
            except StorageFailed as exc:
                log.error("%s %s: %s (kept in memory, written when there is room)", self.noun, pred.id, exc)
                if pred.done:
                    self._unsaved[pred.id] = pred
                return
            self._unsaved.pop(pred.id, None)

    def flush(self) -> int:
        """Write the finished runs a refused write left in memory; how many are still owed."""
        with self._lock:
            for pred in list(self._unsaved.values()):
                try:
                    self._write(pred)
                except StorageFailed:
                    break
                del self._unsaved[pred.id]
            return len(self._unsaved)

    def _write(self, pred: Prediction) -> None:
        record = (pred.id, _stamp(pred.created_at), json.dumps(pred.to_record()))
        self._db.write(f"the {self.noun}", (f"INSERT OR REPLACE INTO {self.kind} VALUES (?, ?, ?)", record))

    def get(self, pred_id: str) -> Prediction | None:
        with self._lock:
            found = self._live.get(pred_id) or self._unsaved.get(pred_id)
        if found is not None:
            return found
        row = self._db.read_one(f"SELECT id, created_at, record FROM {self.kind} WHERE id = ?", (pred_id,))
        if not row:
            return None
        pred = self._load(*row)
        if self._expired(pred.completed_at if pred.done else None) and not pred.data_removed:
            self._remove_data(pred)
        return pred

    def _load(self, pred_id: str, created_at: str, record: str) -> Prediction:
        """The stored run; one whose row cannot be read is shown failed, not as an error for everyone."""
        try:
            return self.record.from_record(_loads(record))
        except (ValueError, TypeError, AttributeError, RecursionError) as exc:
            log.warning("%s %s: unreadable stored record (%s)", self.kind, pred_id, exc)
            return self.record(
                id=pred_id,
                version="unknown",
                input={},
                status="failed",
                error=UNREADABLE.format(noun=self.noun),
                created_at=stored_time(created_at) or now(),
            )

    def unfinished_runs(self) -> list[Prediction]:
        """Those created and not yet finished (queued or running)."""
        with self._lock:
            return list(self._live.values())

    def unfinished_count(self) -> int:
        """Runs created and not yet finished (queued or running), for MUSICGEN_MAX_QUEUE."""
        with self._lock:
            return len(self._live)

    def page(
        self,
        limit: int,
        cursor: str | None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> tuple[list[Prediction], str | None, str | None]:
        """Newest first, created in [created_after, created_before). Returns (predictions, next cursor,
        previous cursor); ValueError on a bad cursor."""
        kind, created, pid = decode_cursor(cursor) if cursor else ("next", None, None)
        where, args = [], []
        if created_after is not None:
            where.append("created_at >= ?")
            args.append(_stamp(created_after))
        if created_before is not None:
            where.append("created_at < ?")
            args.append(_stamp(created_before))
        if created is not None:
            where.append("(created_at, id) < (?, ?)" if kind == "next" else "(created_at, id) > (?, ?)")
            args += [created, pid]
        order = "DESC" if kind == "next" else "ASC"
        sql = f"{'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY created_at {order}, id {order} LIMIT ?"
        args.append(limit + 1)
        rows = self._db.read(f"SELECT id FROM {self.kind} {sql}", args)
        more = len(rows) > limit
        ids = [r[0] for r in rows[:limit]]
        if kind == "prev":
            ids.reverse()
        preds = [p for p in map(self.get, ids) if p]
        if not preds:
            return [], None, None
        has_older = more if kind == "next" else True
        has_newer = cursor is not None and (more if kind == "prev" else True)
        return (
            preds,
            _encode_cursor("next", preds[-1]) if has_older else None,
            _encode_cursor("prev", preds[0]) if has_newer else None,
        )

    # -- retention ---------------------------------------------------------------------------------
    def _expired(self, t: datetime | None) -> bool:
        return self.retention is not None and t is not None and t < now() - self.retention

    def _remove_data(self, pred: Prediction) -> None:
        folder, kept = self.prediction_dir(pred.id), set(self.record.KEPT_AFTER_RETENTION)
        if not kept:
            shutil.rmtree(folder, ignore_errors=True)
        for path in folder.iterdir() if kept and folder.is_dir() else ():
            if path.name not in kept:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        pred.expire()
        try:
            with self._lock:
                self._write(pred)
        except StorageFailed as exc:  # its files are gone; the record says so at the next sweep
            log.warning("%s", exc)

    def remove_expired(self) -> int:
        """Remove what the retention has passed: finished runs' files and inputs."""
        if self.retention is None:
            return 0
        rows = self._db.read(
            f"SELECT id, created_at, record FROM {self.kind} WHERE {_field('completed_at')} < ? "
            f"AND NOT coalesce({_field('data_removed')}, 0)",
            (_stamp(now() - self.retention),),
        )
        for row in rows:
            self._remove_data(self._load(*row))
        return len(rows)

    # -- completed webhooks not yet delivered (a restart sends them) ---------------------------------------
    def keep_webhook(self, msg_id: str, run_id: str, url: str, body: bytes, event: str) -> None:
        self._db.write(
            "the webhook",
            (
                "INSERT OR REPLACE INTO webhooks VALUES (?, ?, ?, ?, ?, ?)",
                (msg_id, self.kind, run_id, url, body, event),
            ),
        )

    def webhook_done(self, msg_id: str) -> None:
        try:
            self._db.write("the delivered webhook", ("DELETE FROM webhooks WHERE msg_id = ?", (msg_id,)))
        except StorageFailed:  # worst case it is sent again after a restart, same id
            pass

    def pending_webhooks(self) -> list[tuple[str, str, str, bytes, str]]:
        """(msg_id, run_id, url, body, event) of this kind's webhooks kept and not yet done."""
        return self._db.read(
            "SELECT msg_id, run_id, url, body, event FROM webhooks WHERE kind = ? ORDER BY rowid", (self.kind,)
        )
