"""Predictions and uploaded files, in SQLite plus a data directory.

Layout under the data directory:
  musicgen.sqlite3            predictions and files (one JSON record per row)
  predictions/<id>/out.wav    each prediction's output
  files/<id>/<name>           uploads from POST /v1/files

Predictions still running live in memory (`_live`) and are written through on every state change,
so progress updates do not hit the disk 50 times a second; a restart finds the last state written.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .prediction import Prediction, iso, new_id, now

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (id TEXT PRIMARY KEY, created_at TEXT NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS predictions_created ON predictions (created_at, id);
CREATE TABLE IF NOT EXISTS files (id TEXT PRIMARY KEY, record TEXT NOT NULL);
"""


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


class Store:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.data_dir / "musicgen.sqlite3", check_same_thread=False)
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._live: dict[str, Prediction] = {}

    def unfinished(self) -> list[Prediction]:
        """Predictions a previous process left queued or running, oldest first (read at start-up)."""
        with self._lock:
            rows = self._db.execute("SELECT record FROM predictions ORDER BY created_at, id").fetchall()
        preds = [Prediction.from_record(json.loads(record)) for (record,) in rows]
        unfinished = [p for p in preds if not p.done]
        with self._lock:
            self._live.update((p.id, p) for p in unfinished)
        return unfinished

    # -- predictions -------------------------------------------------------------------------------
    def prediction_dir(self, pred_id: str) -> Path:
        return self.data_dir / "predictions" / pred_id

    def add(self, pred: Prediction) -> None:
        with self._lock:
            self._live[pred.id] = pred
            self._write(pred)

    def save(self, pred: Prediction) -> None:
        with self._lock:
            self._write(pred)
            if pred.done:
                self._live.pop(pred.id, None)

    def _write(self, pred: Prediction) -> None:
        self._db.execute("INSERT OR REPLACE INTO predictions VALUES (?, ?, ?)",
                         (pred.id, _stamp(pred.created_at), json.dumps(pred.to_record())))
        self._db.commit()

    def get(self, pred_id: str) -> Prediction | None:
        with self._lock:
            if pred_id in self._live:
                return self._live[pred_id]
            row = self._db.execute("SELECT record FROM predictions WHERE id = ?", (pred_id,)).fetchone()
        return Prediction.from_record(json.loads(row[0])) if row else None

    def page(self, limit: int, cursor: str | None, created_after: datetime | None = None,
             created_before: datetime | None = None) -> tuple[list[Prediction], str | None, str | None]:
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
            rows = self._db.execute(f"SELECT id FROM predictions {sql}", args).fetchall()
        more = len(rows) > limit
        ids = [r[0] for r in rows[:limit]]
        if kind == "prev":
            ids.reverse()
        preds = [p for p in map(self.get, ids) if p]
        if not preds:
            return [], None, None
        has_older = more if kind == "next" else True
        has_newer = cursor is not None and (more if kind == "prev" else True)
        return (preds, _encode_cursor("next", preds[-1]) if has_older else None,
                _encode_cursor("prev", preds[0]) if has_newer else None)

    # -- uploaded files ----------------------------------------------------------------------------
    def add_file(self, name: str, content_type: str, content: bytes, metadata: dict[str, Any]) -> dict[str, Any]:
        file_id = new_id()
        safe_name = Path(name).name or "file"
        path = self.data_dir / "files" / file_id / safe_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        record = {"id": file_id, "name": safe_name, "content_type": content_type, "size": len(content),
                  "etag": hashlib.md5(content).hexdigest(),
                  "checksums": {"sha256": hashlib.sha256(content).hexdigest(), "md5": hashlib.md5(content).hexdigest()},
                  "metadata": metadata, "created_at": iso(now()), "expires_at": None}
        with self._lock:
            self._db.execute("INSERT INTO files VALUES (?, ?)", (file_id, json.dumps(record)))
            self._db.commit()
        return record

    def get_file(self, file_id: str) -> tuple[dict[str, Any], Path] | None:
        with self._lock:
            row = self._db.execute("SELECT record FROM files WHERE id = ?", (file_id,)).fetchone()
        if not row:
            return None
        record = json.loads(row[0])
        return record, self.data_dir / "files" / file_id / record["name"]

    def secret(self) -> str:
        """The webhook signing secret, made once and kept in the data directory."""
        path = self.data_dir / "webhook_secret"
        with self._lock:
            if not path.exists():
                path.write_text("whsec_" + base64.b64encode(os.urandom(32)).decode())
                path.chmod(0o600)
            return path.read_text().strip()
