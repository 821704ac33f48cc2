"""Predictions and uploaded files, in SQLite plus a data directory.

Layout under the data directory:
  musicgen.sqlite3            predictions, trainings and files (one JSON record per row), models
                              and versions (registry.py), `completed` webhooks not yet delivered
  predictions/<id>/out.wav    each prediction's output
  trainings/<id>/             each training's work folder (dataset pieces, checkpoints) and weights.tar
  files/<id>/<name>           uploads from POST /v1/files

Predictions still running live in memory (`_live`) and are written through on every state change,
so progress updates do not hit the disk 50 times a second; a restart finds the last state written.

Reading never fails on what is stored: a row another version wrote, or one that holds text no
response can encode, is rendered as well as it can be (see `_load`). With a retention
(MUSICGEN_RETENTION), finished predictions' files and uploads older than it are removed: by the
app's periodic `remove_expired`, and by every read that finds one due first.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from .prediction import Prediction, iso, new_id, now, stored_time
from .surrogates import scrub

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (id TEXT PRIMARY KEY, created_at TEXT NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS predictions_created ON predictions (created_at, id);
CREATE TABLE IF NOT EXISTS files (id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trainings (id TEXT PRIMARY KEY, created_at TEXT NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS trainings_created ON trainings (created_at, id);
CREATE TABLE IF NOT EXISTS webhooks (msg_id TEXT PRIMARY KEY, kind TEXT NOT NULL, run_id TEXT NOT NULL,
                                     url TEXT NOT NULL, body BLOB NOT NULL, event TEXT NOT NULL);
"""
KINDS = ("predictions", "trainings")  # the tables of runs, each read as its own record class
UNREADABLE = "This prediction's stored record could not be read (it was written by another version?)."
MAX_NAME_BYTES = 255  # the longest file name Linux file systems take
_CONTENT_TYPE = re.compile(r"[\w.+-]+/[\w.+-]+(?:\s*;\s*[\w.+-]+=[\w.+\-\"]+)*")
_NOT_IN_NAMES = re.compile(r"[\x00-\x1f\x7f]")


# errno values that mean "no room": the disk, a quota, or a limit on file size (RLIMIT_FSIZE)
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class StorageFailed(Exception):
    """The disk or the database refused a write; nothing of it was kept. `full`: there was no room."""

    def __init__(self, what: str, exc: BaseException) -> None:
        self.full = (
            exc.errno in _FULL
            if isinstance(exc, OSError)
            else getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        )
        reason = "the server's disk is full" if self.full else f"its storage refused the write ({exc})"
        super().__init__(f"Could not store {what}: {reason}. Nothing was kept; try again later.")


def _stamp(t: datetime) -> str:
    """The stored `created_at`. In one zone, isoformat() strings sort as the times do (even when it drops
    zero microseconds: '+' sorts before '.'), so SQL compares them as text, on the index."""
    return t.astimezone(UTC).isoformat()


def _encode_cursor(kind: str, pred: Prediction) -> str:
    raw = f"{kind}|{_stamp(pred.created_at)}|{pred.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def safe_filename(name: str) -> str:
    """An upload's name as it can be stored: its last path component, without control characters,
    at most 255 bytes (the extension kept), and never empty, `.` or `..`."""
    name = _NOT_IN_NAMES.sub("", re.split(r"[/\\]", name)[-1]).strip()
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext.encode()) > 16:  # `.hidden`, or no real extension: all stem
        stem, ext = name, ""
    suffix = f".{ext}" if ext else ""
    name = stem.encode()[: MAX_NAME_BYTES - len(suffix.encode())].decode(errors="ignore") + suffix
    return "file" if name in ("", ".", "..") else name


def safe_content_type(value: str | None) -> str:
    return value if value and _CONTENT_TYPE.fullmatch(value) else "application/octet-stream"


def decode_cursor(cursor: str) -> tuple[str, str, str]:
    """-> (kind 'next'|'prev', created_at, id); ValueError on anything malformed."""
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    kind, created, pid = raw.split("|")
    if kind not in ("next", "prev"):
        raise ValueError(kind)
    return kind, created, pid


def _decode_text(raw: bytes) -> str:
    # A row holding invalid UTF-8 (written by hand or by another program) reads with U+FFFD in place.
    return raw.decode("utf-8", "replace")


def _field(name: str) -> str:
    """SQL for one key of a row's JSON record; NULL for a row that is not JSON (never an SQL error)."""
    return f"CASE WHEN json_valid(record) THEN json_extract(record, '$.{name}') END"


def _loads(text: str) -> Any:
    return scrub(json.loads(text))


class Store:
    def __init__(
        self,
        data_dir: Path,
        retention_s: float | None = None,
        kind: str = "predictions",
        record: type[Prediction] = Prediction,
    ) -> None:
        """`kind`: "predictions", or "trainings" (read as `record`, a Prediction subclass), in the same file."""
        if kind not in KINDS:
            raise ValueError(kind)
        self.kind, self.record = kind, record
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.retention = timedelta(seconds=retention_s) if retention_s else None
        self._db = sqlite3.connect(self.data_dir / "musicgen.sqlite3", check_same_thread=False)
        self._db.text_factory = _decode_text
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._live: dict[str, Prediction] = {}
        self.uploaded_bytes = 0  # since start, for /metrics

    def unfinished(self) -> list[Prediction]:
        """Predictions a previous process left queued or running, oldest first (read at start-up)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, created_at, record FROM {self.kind} ORDER BY created_at, id"
            ).fetchall()
        preds = [self._load(*row) for row in rows]  # an unreadable row loads as failed: done, not run again
        unfinished = [p for p in preds if not p.done]
        with self._lock:
            self._live.update((p.id, p) for p in unfinished)
        return unfinished

    # -- predictions -------------------------------------------------------------------------------
    def prediction_dir(self, pred_id: str) -> Path:
        return self.data_dir / self.kind / pred_id

    def add(self, pred: Prediction) -> None:
        """Raises StorageFailed, and then the prediction counts nowhere (not against MUSICGEN_MAX_QUEUE)."""
        with self._lock:
            self._write(pred)
            self._live[pred.id] = pred

    def save(self, pred: Prediction) -> None:
        with self._lock:
            self._write(pred)
            if pred.done:
                self._live.pop(pred.id, None)

    def _write(self, pred: Prediction) -> None:
        self._commit(
            f"the {self.kind[:-1]}",
            f"INSERT OR REPLACE INTO {self.kind} VALUES (?, ?, ?)",
            (pred.id, _stamp(pred.created_at), json.dumps(pred.to_record())),
        )

    def _commit(self, what: str, sql: str, args: tuple) -> None:
        """One write, committed; on a refusal nothing of it stays, and StorageFailed names `what` (hold the lock)."""
        try:
            self._db.execute(sql, args)
            self._db.commit()
        except sqlite3.Error as exc:
            with suppress(sqlite3.Error):
                self._db.rollback()
            raise StorageFailed(what, exc) from exc

    def get(self, pred_id: str) -> Prediction | None:
        with self._lock:
            if pred_id in self._live:
                return self._live[pred_id]
            row = self._db.execute(
                f"SELECT id, created_at, record FROM {self.kind} WHERE id = ?", (pred_id,)
            ).fetchone()
        if not row:
            return None
        pred = self._load(*row)
        if self._expired(pred.completed_at if pred.done else None) and not pred.data_removed:
            self._remove_data(pred)
        return pred

    def _load(self, pred_id: str, created_at: str, record: str) -> Prediction:
        """The stored prediction; one whose row cannot be read is shown failed, not as an error for everyone."""
        try:
            return self.record.from_record(_loads(record))
        except (ValueError, TypeError, AttributeError, RecursionError) as exc:
            log.warning("%s %s: unreadable stored record (%s)", self.kind, pred_id, exc)
            return self.record(
                id=pred_id,
                version="unknown",
                input={},
                status="failed",
                error=UNREADABLE,
                created_at=stored_time(created_at) or now(),
            )

    def unfinished_runs(self) -> list[Prediction]:
        """Those created and not yet finished (queued or running)."""
        with self._lock:
            return list(self._live.values())

    def unfinished_count(self) -> int:
        """Predictions created and not yet finished (queued or running), for MUSICGEN_MAX_QUEUE."""
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
        with self._lock:
            rows = self._db.execute(f"SELECT id FROM {self.kind} {sql}", args).fetchall()
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

    # -- uploaded files ----------------------------------------------------------------------------
    def add_file(
        self, name: str, content_type: str | None, content: BinaryIO, metadata: dict[str, Any]
    ) -> dict[str, Any]:
        """Copy an upload to disk in chunks, hashing as it goes (blocking: run it off the event loop)."""
        file_id, safe_name = new_id(), safe_filename(name)
        path = self.data_dir / "files" / file_id / safe_name
        md5, sha256, size = hashlib.md5(), hashlib.sha256(), 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as out:
                while chunk := content.read(1 << 20):
                    md5.update(chunk)
                    sha256.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            created = now()
            record = {
                "id": file_id,
                "name": safe_name,
                "content_type": safe_content_type(content_type),
                "size": size,
                "etag": md5.hexdigest(),
                "checksums": {"sha256": sha256.hexdigest(), "md5": md5.hexdigest()},
                "metadata": metadata,
                "created_at": iso(created),
                "expires_at": iso(created + self.retention) if self.retention else None,
            }
        except OSError as exc:
            shutil.rmtree(path.parent, ignore_errors=True)  # a partial upload would only fill the disk further
            raise StorageFailed("the upload", exc) from exc
        try:
            with self._lock:
                self._commit("the upload", "INSERT INTO files VALUES (?, ?)", (file_id, json.dumps(record)))
                self.uploaded_bytes += size
        except StorageFailed:
            shutil.rmtree(path.parent, ignore_errors=True)
            raise
        return record

    def get_file(self, file_id: str) -> tuple[dict[str, Any], Path] | None:
        with self._lock:
            row = self._db.execute("SELECT record FROM files WHERE id = ?", (file_id,)).fetchone()
        if not row:
            return None
        try:
            record = _loads(row[0])
            created, path = stored_time(record["created_at"]), self.data_dir / "files" / file_id / record["name"]
        except (ValueError, TypeError, KeyError, RecursionError) as exc:  # unreadable: as if it were not there
            log.warning("file %s: unreadable stored record (%s)", file_id, exc)
            return None
        if self._expired(created):
            self._remove_file(file_id)
            return None
        return record, path

    # -- retention ---------------------------------------------------------------------------------
    def _expired(self, t: datetime | None) -> bool:
        return self.retention is not None and t is not None and t < now() - self.retention

    def _remove_data(self, pred: Prediction) -> None:
        shutil.rmtree(self.prediction_dir(pred.id), ignore_errors=True)
        pred.output_file, pred.input, pred.data_removed = None, {}, True
        with self._lock:
            self._write(pred)

    def _remove_file(self, file_id: str) -> None:
        shutil.rmtree(self.data_dir / "files" / file_id, ignore_errors=True)
        with self._lock:
            self._db.execute("DELETE FROM files WHERE id = ?", (file_id,))
            self._db.commit()

    def remove_expired(self) -> int:
        """Remove what the retention has passed: finished predictions' files and inputs, and uploads."""
        if self.retention is None:
            return 0
        cutoff = now() - self.retention
        with self._lock:
            preds = self._db.execute(
                f"SELECT id, created_at, record FROM {self.kind} WHERE {_field('completed_at')} < ? "
                f"AND NOT coalesce({_field('data_removed')}, 0)",
                (_stamp(cutoff),),
            ).fetchall()
            files = self._db.execute(
                f"SELECT id FROM files WHERE {_field('created_at')} < ?", (iso(cutoff),)
            ).fetchall()
        for row in preds:
            self._remove_data(self._load(*row))
        for (file_id,) in files:
            self._remove_file(file_id)
        return len(preds) + len(files)

    # -- completed webhooks not yet delivered (a restart sends them) ---------------------------------------
    def keep_webhook(self, msg_id: str, run_id: str, url: str, body: bytes, event: str) -> None:
        with self._lock:
            self._commit(
                "the webhook",
                "INSERT OR REPLACE INTO webhooks VALUES (?, ?, ?, ?, ?, ?)",
                (msg_id, self.kind, run_id, url, body, event),
            )

    def webhook_done(self, msg_id: str) -> None:
        with self._lock, suppress(sqlite3.Error):  # worst case it is sent again after a restart, same id
            self._db.execute("DELETE FROM webhooks WHERE msg_id = ?", (msg_id,))
            self._db.commit()

    def pending_webhooks(self) -> list[tuple[str, str, str, bytes, str]]:
        """(msg_id, run_id, url, body, event) of this kind's webhooks kept and not yet done."""
        with self._lock:
            return self._db.execute(
                "SELECT msg_id, run_id, url, body, event FROM webhooks WHERE kind = ? ORDER BY rowid", (self.kind,)
            ).fetchall()

    def secret(self) -> str:
        """The webhook signing secret, made once and kept in the data directory."""
        path = self.data_dir / "webhook_secret"
        with self._lock:
            if not path.exists():
                path.write_text("whsec_" + base64.b64encode(os.urandom(32)).decode())
                path.chmod(0o600)
            return path.read_text().strip()
