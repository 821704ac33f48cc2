"""Deployments, as Replicate has them: a stable name (`owner/name`) that points at a version and says how it runs.

Each change makes a new release (number, model, version, configuration, created_at); the deployment's current
release is its newest. Both live in the data folder's database (`database.py`), beside the models and versions
(`registry.py`), so deployments survive restarts. What a configuration means on this server's own hardware:
- `hardware`: one of this server's devices (`GET /v1/hardware`: each GPU, or the CPU);
- `min_instances` >= 1: the deployment's model is kept resident on that device for as long as the deployment
  exists (never evicted by other traffic, counted in the device's memory plan);
- `max_instances`: how many of its predictions run at once; the rest wait, in order (0: they all wait).

This module only keeps them; keeping a model warm is the engine's business and capping the predictions the
dispatcher's (`server/instances.py` joins them).
"""

from __future__ import annotations

import base64
import json
import sqlite3
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

from .database import Database, StorageFailed
from .errors import UserError
from .registry import check_name

MAX_MIN_INSTANCES = 5  # Replicate's bounds
MAX_MAX_INSTANCES = 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deployments (name TEXT PRIMARY KEY, created_at TEXT NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS deployments_created ON deployments (created_at, name);
CREATE TABLE IF NOT EXISTS deployment_releases (deployment TEXT NOT NULL, number INTEGER NOT NULL,
                                                record TEXT NOT NULL, PRIMARY KEY (deployment, number));
"""


@dataclass(frozen=True)
class Configuration:
    hardware: str
    min_instances: int
    max_instances: int

    def check(self) -> Configuration:
        """Raises UserError unless the instance counts are within Replicate's bounds and min <= max."""
        for name, value, top in (
            ("min_instances", self.min_instances, MAX_MIN_INSTANCES),
            ("max_instances", self.max_instances, MAX_MAX_INSTANCES),
        ):
            if not 0 <= value <= top:
                raise UserError(f"`{name}` must be from 0 to {top}, got {value}.")
        if self.min_instances > self.max_instances:
            raise UserError(
                f"`min_instances` ({self.min_instances}) must not be more than `max_instances` ({self.max_instances})."
            )
        return self

    @property
    def warm(self) -> bool:
        """Whether its model is kept resident on its hardware."""
        return self.min_instances >= 1


@dataclass(frozen=True)
class Release:
    number: int
    model: str  # "owner/name" of the version
    version: str
    created_at: str
    configuration: Configuration

    @classmethod
    def from_record(cls, record: dict) -> Release:
        return cls(**{**record, "configuration": Configuration(**record["configuration"])})


@dataclass(frozen=True)
class Deployment:
    owner: str
    name: str
    created_at: str
    release: Release  # the current one: the newest

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _cursor(deployment: Deployment) -> str:
    raw = f"{deployment.created_at}|{deployment.full_name}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, str]:
    """-> (created_at, full name); ValueError on anything malformed."""
    created, bar, name = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition("|")
    if not bar:
        raise ValueError(cursor)
    return created, name


class Deployments:
    """The deployments kept in `db` (the data folder's database; None: in memory)."""

    def __init__(self, db: Database | None = None) -> None:
        self._db = db or Database()
        self._db.create(_SCHEMA)

    @property
    def lock(self):
        """The database's lock: held, no deployment changes (to check a version is unused, then delete it)."""
        return self._db.lock

    def get(self, full_name: str) -> Deployment | None:
        row = self._db.read_one("SELECT record FROM deployments WHERE name = ?", (full_name,))
        if row is None:
            return None
        record = json.loads(row[0])
        release = self._db.read_one(
            "SELECT record FROM deployment_releases WHERE deployment = ? ORDER BY number DESC LIMIT 1", (full_name,)
        )
        return Deployment(
            record["owner"], record["name"], record["created_at"], Release.from_record(json.loads(release[0]))
        )

    def all(self) -> list[Deployment]:
        """Every deployment, most recent first."""
        rows = self._db.read("SELECT name FROM deployments ORDER BY created_at DESC, name DESC")
        return [d for d in map(self.get, (r[0] for r in rows)) if d is not None]

    def page(self, limit: int, cursor: str | None) -> tuple[list[Deployment], str | None]:
        """Most recent first: (a page, the cursor of the next one or None). ValueError on a bad cursor."""
        where, args = "", []
        if cursor:
            where, args = "WHERE (created_at, name) < (?, ?)", list(_decode_cursor(cursor))
        rows = self._db.read(
            f"SELECT name FROM deployments {where} ORDER BY created_at DESC, name DESC LIMIT ?", [*args, limit + 1]
        )
        found = [d for d in map(self.get, (r[0] for r in rows[:limit])) if d is not None]
        return found, _cursor(found[-1]) if len(rows) > limit and found else None

    @staticmethod
    def new(owner: str, name: str, model: str, version: str, configuration: Configuration) -> Deployment:
        """A deployment's first release, not kept yet (`add`); UserError for a bad name or configuration."""
        check_name(owner, "owner")
        check_name(name, "name")
        created = _now()
        return Deployment(owner, name, created, Release(1, model, version, created, configuration.check()))

    @staticmethod
    def next_release(current: Deployment, model: str, version: str, configuration: Configuration) -> Deployment:
        """`current` with a new release numbered after its own, not kept yet (`add_release`); UserError for a bad
        configuration."""
        release = Release(current.release.number + 1, model, version, _now(), configuration.check())
        return replace(current, release=release)

    def add(self, deployment: Deployment) -> None:
        """Keep a new deployment. Raises FileExistsError when one of that name exists (nothing is written),
        StorageFailed when the database refuses the write."""
        record = json.dumps({"owner": deployment.owner, "name": deployment.name, "created_at": deployment.created_at})
        try:
            self._db.write(
                "the deployment",
                ("INSERT INTO deployments VALUES (?, ?, ?)", (deployment.full_name, deployment.created_at, record)),
                self._release_row(deployment),
            )
        except StorageFailed as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise FileExistsError(deployment.full_name) from None
            raise

    def add_release(self, deployment: Deployment) -> None:
        """Keep its new release. Raises LookupError when the deployment was deleted meanwhile, StorageFailed when
        the write is refused."""
        with self._db.lock:
            if self.get(deployment.full_name) is None:
                raise LookupError(deployment.full_name)
            self._db.write("the deployment's new release", self._release_row(deployment))

    def delete(self, full_name: str) -> bool:
        """False when there was no such deployment."""
        with self._db.lock:
            if self.get(full_name) is None:
                return False
            self._db.write(
                "the deletion of the deployment",
                ("DELETE FROM deployment_releases WHERE deployment = ?", (full_name,)),
                ("DELETE FROM deployments WHERE name = ?", (full_name,)),
            )
        return True

    def using(self, *, model: str | None = None, version: str | None = None) -> list[str]:
        """The deployments whose current release runs this model (or this version), by name."""
        return [
            d.full_name
            for d in self.all()
            if (model is not None and d.release.model == model)
            or (version is not None and d.release.version == version)
        ]

    @staticmethod
    def _release_row(deployment: Deployment) -> tuple[str, tuple]:
        release = deployment.release
        return (
            "INSERT INTO deployment_releases VALUES (?, ?, ?)",
            (deployment.full_name, release.number, json.dumps(asdict(release))),
        )
