"""The one SQLite database of a data folder: runs, uploads, models and versions, webhooks kept for delivery.

One connection, shared by every part that keeps something there (each kind's store, the uploads, the registry),
behind one lock: our own writers never contend for the file's lock, so no write of ours answers "database is
locked" to another. Every write is committed or rolled back whole (`write`), so a refused write (a duplicate name,
a full disk) never leaves a transaction open that would hold the file for every later write. Write-ahead logging
and a busy timeout cover another process holding the file (a CLI reading it, a backup).
"""

from __future__ import annotations

import errno
import sqlite3
import threading
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any

BUSY_TIMEOUT_S = 30
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


def _decode_text(raw: bytes) -> str:
    # A row holding invalid UTF-8 (written by hand or by another program) reads with U+FFFD in place.
    return raw.decode("utf-8", "replace")


class Database:
    def __init__(self, path: Path | None = None) -> None:
        """`path`: the SQLite file (None: in memory, for the CLI and Cog, which keep nothing)."""
        self.path = path
        self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False, timeout=BUSY_TIMEOUT_S)
        self._db.text_factory = _decode_text
        if path:
            with suppress(sqlite3.Error):  # a file system without shared memory keeps the rollback journal
                self._db.execute("PRAGMA journal_mode=WAL")
        self.lock = threading.RLock()

    def create(self, schema: str) -> None:
        with self.lock:
            self._db.executescript(schema)

    def read(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        with self.lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    def read_one(self, sql: str, args: Iterable[Any] = ()) -> tuple | None:
        with self.lock:
            return self._db.execute(sql, tuple(args)).fetchone()

    def write(self, what: str, *statements: tuple[str, Iterable[Any]]) -> None:
        """(sql, args) statements as one transaction, committed; on any refusal nothing of them stays and
        StorageFailed names `what` (the sqlite3 error is its cause: IntegrityError for a duplicate key)."""
        with self.lock:
            try:
                for sql, args in statements:
                    self._db.execute(sql, tuple(args))
                self._db.commit()
            except sqlite3.Error as exc:
                with suppress(sqlite3.Error):
                    self._db.rollback()
                raise StorageFailed(what, exc) from exc

    def close(self) -> None:
        with self.lock:
            self._db.close()
