"""Files kept by the server: uploads (POST /v1/files) and the inputs runs are created with.

An upload is copied to `files/<id>/<name>` in chunks, hashed as it goes; its record lives in the data folder's
database. A run's file input (`input_audio`, a training's `dataset_path`) given as a `data:` URI is kept the same
way, once, as a file (`keep_data_uri`): the run's record holds its URL, never its bytes, so a record and a list page
stay small whatever the inputs were. With a retention (MUSICGEN_RETENTION), files older than it are removed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import mimetypes
import re
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from ..database import Database, StorageFailed
from ..inputs import decode_data_uri
from .prediction import iso, new_id, now, stored_time
from .surrogates import scrub

log = logging.getLogger(__name__)
SCHEMA = "CREATE TABLE IF NOT EXISTS files (id TEXT PRIMARY KEY, record TEXT NOT NULL);"
MAX_NAME_BYTES = 255  # the longest file name Linux file systems take
_CONTENT_TYPE = re.compile(r"[\w.+-]+/[\w.+-]+(?:\s*;\s*[\w.+-]+=[\w.+\-\"]+)*")
_NOT_IN_NAMES = re.compile(r"[\x00-\x1f\x7f]")


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


class FileStore:
    def __init__(self, database: Database, data_dir: Path, retention_s: float | None = None) -> None:
        self._db = database
        self._db.create(SCHEMA)
        self.root = Path(data_dir) / "files"
        self.retention = timedelta(seconds=retention_s) if retention_s else None
        self.uploaded_bytes = 0  # since start, for /metrics

    def add(self, name: str, content_type: str | None, content: BinaryIO, metadata: dict[str, Any]) -> dict[str, Any]:
        """Copy an upload to disk in chunks, hashing as it goes (blocking: run it off the event loop). Raises
        StorageFailed, and then nothing of it is kept."""
        file_id, safe_name = new_id(), safe_filename(name)
        path = self.root / file_id / safe_name
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
            self._db.write("the upload", ("INSERT INTO files VALUES (?, ?)", (file_id, json.dumps(record))))
        except OSError as exc:
            shutil.rmtree(path.parent, ignore_errors=True)  # a partial upload would only fill the disk further
            raise StorageFailed("the upload", exc) from exc
        except StorageFailed:
            shutil.rmtree(path.parent, ignore_errors=True)
            raise
        self.uploaded_bytes += size
        return record

    def keep_data_uri(self, uri: str, name: str, max_bytes: int, size_setting: str) -> dict[str, Any]:
        """A `data:` URI input kept as a file (`name`: the input it was given as, e.g. `input_audio`); UserError when
        it is malformed or larger than `max_bytes` (the setting `size_setting`)."""
        mime, data = decode_data_uri(uri, name, max_bytes, size_setting)
        extension = (mimetypes.guess_extension(mime) or ".bin").lstrip(".")
        return self.add(f"{name}.{extension}", mime, io.BytesIO(data), {"from": "data: URI"})

    def path_of(self, record: dict[str, Any]) -> Path:
        return self.root / record["id"] / record["name"]

    def get(self, file_id: str) -> tuple[dict[str, Any], Path] | None:
        row = self._db.read_one("SELECT record FROM files WHERE id = ?", (file_id,))
        if not row:
            return None
        try:
            record = scrub(json.loads(row[0]))
            created, path = stored_time(record["created_at"]), self.path_of({**record, "id": file_id})
        except (ValueError, TypeError, KeyError, RecursionError) as exc:  # unreadable: as if it were not there
            log.warning("file %s: unreadable stored record (%s)", file_id, exc)
            return None
        if self._expired(created):
            self._remove(file_id)
            return None
        return record, path

    def _expired(self, t: datetime | None) -> bool:
        return self.retention is not None and t is not None and t < now() - self.retention

    def _remove(self, file_id: str) -> None:
        shutil.rmtree(self.root / file_id, ignore_errors=True)
        try:
            self._db.write("the file's removal", ("DELETE FROM files WHERE id = ?", (file_id,)))
        except StorageFailed as exc:  # its files are gone; the row goes at the next sweep
            log.warning("%s", exc)

    def remove_expired(self) -> int:
        if self.retention is None:
            return 0
        cutoff = iso(now() - self.retention)
        rows = self._db.read(
            "SELECT id FROM files WHERE CASE WHEN json_valid(record) THEN json_extract(record, '$.created_at') END < ?",
            (cutoff,),
        )
        for (file_id,) in rows:
            self._remove(file_id)
        return len(rows)
