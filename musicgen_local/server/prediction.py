"""The prediction object, shaped exactly as Replicate's v1 API returns it.

A `Prediction` holds what we persist; `to_json(base_url)` renders the public object, so output
and `urls` are absolute URLs for whoever is asking (or, for webhooks, the creator's base URL).
`from_record` reads back any stored row, including rows written by other versions.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from ..registry import MUSICGEN
from .surrogates import scrub

MODEL = MUSICGEN
FINISHED_STATUSES = ("succeeded", "failed", "canceled")
MIME_TYPES = {".wav": "audio/wav", ".mp3": "audio/mpeg"}
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def new_id() -> str:
    """26 lowercase characters, like Replicate's ids; unguessable, because output URLs need no token."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(26))


def data_uri(path: Path) -> str:
    mime = MIME_TYPES.get(path.suffix, "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def now() -> datetime:
    return datetime.now(UTC)


def iso(t: datetime | None) -> str | None:
    # Replicate writes e.g. 2024-05-01T12:00:00.123456Z
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if t else None


def stored_time(value: Any) -> datetime | None:
    try:
        t = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


@dataclass
class Prediction:
    PATH: ClassVar[str] = "predictions"  # its routes: /v1/predictions/<id>
    INLINE_OUTPUT: ClassVar[bool] = True  # MUSICGEN_OUTPUT=data-uri inlines its output file
    KEPT_AFTER_RETENTION: ClassVar[tuple[str, ...]] = ()  # files of its folder MUSICGEN_RETENTION leaves

    id: str
    version: str
    input: dict[str, Any]
    model: str = MODEL  # "owner/name" of the version: meta/musicgen, or a model a training made a version of
    created_at: datetime = field(default_factory=now)
    status: str = "starting"
    logs: str = ""
    output_file: str | None = None  # file name inside this prediction's data directory
    output_files: dict[str, str] = field(default_factory=dict)  # an output object's: name -> file name
    error: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    webhook: str | None = None
    webhook_events_filter: tuple[str, ...] = ("start", "output", "logs", "completed")
    base_url: str = ""  # the creator's base URL, used to render webhook bodies
    request: dict[str, Any] = field(default_factory=dict)  # the engine Request built at creation (seed fixed)
    attempts: int = 0  # times handed to the engine (a prediction interrupted by a restart is run once more)
    data_removed: bool = False  # MUSICGEN_RETENTION passed: input and output files removed, as on Replicate
    cancel_at: datetime | None = None  # its Cancel-After deadline, kept so that a restart still enforces it
    deployment: str | None = None  # "owner/name" of the deployment it was created through

    @property
    def done(self) -> bool:
        return self.status in FINISHED_STATUSES

    def metrics(self) -> dict[str, float]:
        if not self.completed_at:
            return {}
        out = {"total_time": (self.completed_at - self.created_at).total_seconds()}
        if self.started_at:
            out["predict_time"] = (self.completed_at - self.started_at).total_seconds()
        return out

    def to_json(self, base_url: str | None = None, inline_dir: Path | None = None) -> dict[str, Any]:
        """The object as the API returns it. `inline_dir`: render the output as a data URI of the file there
        instead of a URL."""
        base = (base_url or self.base_url).rstrip("/")
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            **self._fields(),
            "input": self.input,
            "logs": self.logs,
            "output": self._output(base, inline_dir),
            "data_removed": self.data_removed,
            "error": self.error,
            "status": self.status,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "completed_at": iso(self.completed_at),
            "source": "api",
            "metrics": self.metrics(),
            "urls": {"get": f"{base}/v1/{self.PATH}/{self.id}", "cancel": f"{base}/v1/{self.PATH}/{self.id}/cancel"},
        }

    def _fields(self) -> dict[str, Any]:
        """The fields of this kind of run alone, and those only some runs have (Replicate leaves them out)."""
        out: dict[str, Any] = {}
        if self.deployment is not None:
            out["deployment"] = self.deployment
        if self.cancel_at is not None:
            out["deadline"] = iso(self.cancel_at)
        return out

    def _output(self, base: str, inline_dir: Path | None) -> Any:
        if self.output_files:
            return {name: self._file_output(base, inline_dir, file) for name, file in self.output_files.items()}
        if not self.output_file:
            return None
        return self._file_output(base, inline_dir, self.output_file)

    def _file_output(self, base: str, inline_dir: Path | None, name: str) -> str | None:
        if inline_dir is not None:
            path = inline_dir / name
            return data_uri(path) if path.is_file() else None
        return f"{base}/delivery/{self.id}/{name}"

    def output_names(self) -> set[str]:
        """The files this prediction's output is made of (what /delivery serves)."""
        return {self.output_file} - {None} | set(self.output_files.values())

    def expire(self) -> None:
        """MUSICGEN_RETENTION passed: what the record says of its removed files."""
        self.output_file, self.output_files, self.input, self.data_removed = None, {}, {}, True

    # Persistence: a plain dict of JSON-able values (datetimes as ISO strings).
    def to_record(self) -> dict[str, Any]:
        rec = asdict(self)
        for key in ("created_at", "started_at", "completed_at", "cancel_at"):
            rec[key] = rec[key].isoformat() if rec[key] else None
        rec["webhook_events_filter"] = list(self.webhook_events_filter)
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Prediction:
        """Unknown keys are ignored and missing ones take their defaults; lone surrogates become U+FFFD.
        Raises TypeError when the row lacks what no default can stand for (id, version, input)."""
        known = {f.name for f in fields(cls)}
        rec = {key: value for key, value in scrub(rec).items() if key in known}
        for key in ("started_at", "completed_at", "cancel_at"):
            rec[key] = stored_time(rec.get(key))
        rec["created_at"] = stored_time(rec.get("created_at")) or rec["completed_at"] or now()
        if "webhook_events_filter" in rec:
            rec["webhook_events_filter"] = tuple(rec["webhook_events_filter"] or ())
        return cls(**rec)
