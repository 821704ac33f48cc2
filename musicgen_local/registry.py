"""Every model and version this server knows, in one place.

The published ones are fixed: `meta/musicgen` and its two Replicate version ids, whose input
`model_version` picks one of the base models below (`PRESETS`). Models created with
`POST /v1/models` and the versions their trainings produce live in the store (SQLite, beside the
predictions) and so survive restarts. A trained version names the base `model_version` it was
tuned from and its weights (a `musicgen_local.tuned` tar): requests for it decode the base with
those weights, batched with everything else of that base.

Schema, routes, engine, CLI, Cog and Ray all ask this module; nothing else lists models.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from .database import Database, StorageFailed
from .errors import UserError


@dataclass(frozen=True)
class Preset:
    """What a model_version is: named once here, never sniffed from the name."""

    channels: int  # audio channels out (0: as many as the input, for encode-decode)
    melody: bool = False  # conditions on a melody (needs htdemucs)
    lm: bool = True  # generates with a language model (encode-decode only runs the codec)
    # The LM's scale (audiocraft's model_scale configs): `large` is 2048 wide, 48 layers, 32 heads.
    dim: int = 2048
    layers: int = 48
    heads: int = 32


ENCODE_DECODE = "encode-decode"
PRESETS: dict[str, Preset] = {
    "stereo-melody-large": Preset(2, melody=True),
    "stereo-large": Preset(2),
    "melody-large": Preset(1, melody=True),
    "large": Preset(1),
    ENCODE_DECODE: Preset(0, lm=False),
    # facebook/musicgen-medium (1.5 B, mono): the looper's default model, never one of meta/musicgen's choices.
    "medium": Preset(1, dim=1536, layers=48, heads=24),
}
# meta/musicgen's `model_version` choices: its published schema lists exactly these five, in this order.
MODEL_VERSIONS = ("stereo-melody-large", "stereo-large", "melody-large", "large", ENCODE_DECODE)
LM_VERSIONS = tuple(v for v in MODEL_VERSIONS if PRESETS[v].lm)
# andreasjansson/musicgen-looper's `model_version` choices, as published.
LOOPER_VERSIONS = ("medium", "large")
# Every preset the weights can be fetched and laid out for (meta/musicgen's and the looper's).
FETCHABLE_VERSIONS = tuple(PRESETS)

MUSICGEN = "meta/musicgen"
LOOPER = "andreasjansson/musicgen-looper"
# Replicate's two published version ids of meta/musicgen: b05b1dff has encode-decode, 671ac645 does not.
PUBLISHED = (
    "b05b1dff1d8c6dc63d14b0cdb42135378dcb87f6373b0d3d341ede46e59e2b38",
    "671ac645ce5e552cc63a54a2bbff63fcf798043055d2dac5fc9e36a837eedcfb",
)
LATEST = PUBLISHED[0]
# andreasjansson/musicgen-looper's versions whose output is the `variation_01`... object (f8140d04 and fd5be669 on
# their version pages; ad041aeb is the one TypeScript clients pin and read the same way).
LOOPER_PUBLISHED = (
    "f8140d0457c2b39ad8728a80736fea9a67a0ec0cd37b35f40b68cce507db2366",
    "fd5be66946bb89875b829c5011ea76db4b7540da85160dd001f8c459aa22312c",
    "ad041aebc8406f8883e7f28313614c4a11c6e623dd934a54f2bf30127b4bc7a8",
)
PUBLISHED_AT = "2024-03-14T16:54:56.000000Z"  # fixed: a published version never changes
NAME_PATTERN = r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?"  # Replicate's owner and model names
_NAME = re.compile(NAME_PATTERN)
VISIBILITIES = ("public", "private")


def preset(model_version: str) -> Preset:
    return PRESETS[model_version]


def has_lm(model_version: str) -> bool:
    return PRESETS[model_version].lm


def model_version_of(channels: int, melody: bool, dim: int) -> str:
    """The model_version whose architecture a checkpoint has (a Cog weights tar names none): by channels and
    melody, and by width among those (`medium` and `large` differ only there); meta/musicgen's first otherwise."""
    found = [v for v, p in PRESETS.items() if p.lm and (p.channels, p.melody) == (channels, melody)]
    if not found:
        raise UserError(f"No model_version has {channels} channel(s) and melody {melody}.")
    return next(
        (v for v in found if PRESETS[v].dim == dim), next(v for v in MODEL_VERSIONS + tuple(found) if v in found)
    )


@dataclass(frozen=True)
class Version:
    id: str
    model: str  # "owner/name"
    created_at: str
    base: str | None = None  # the model_version it was tuned from; None: a published version (any model_version)
    weights: str | None = None  # path of its `tuned` tar; None: the published weights
    kind: str | None = None  # "lora" or "full" for a trained version
    training: str | None = None  # the id of the training that made it

    @property
    def trained(self) -> bool:
        return self.weights is not None

    @property
    def tune(self) -> str | None:
        """What the engine calls a trained version's fine-tune (its adapter's name in /health-check)."""
        return f"{self.model}:{self.id}" if self.trained else None

    def allows_encode_decode(self) -> bool:
        return self.id == LATEST

    @property
    def loops(self) -> bool:
        """A version of the looper: its input is looper/schema.py's, its output an object of loops."""
        return self.model == LOOPER

    def model_version_for(self, asked: str | None) -> str:
        """The model_version a request for this version runs: a trained version runs its base, and
        refuses to run another (its weights fit that architecture only)."""
        if self.base is None:
            return asked or "stereo-melody-large"
        if asked not in (None, self.base):
            raise UserError(
                f"Version {self.model}:{self.id} was fine-tuned from `{self.base}`; "
                f"model_version must be `{self.base}` (or left out), not `{asked}`."
            )
        return self.base


@dataclass(frozen=True)
class Model:
    owner: str
    name: str
    description: str | None = None
    visibility: str = "private"
    hardware: str = "local"
    created_at: str = ""

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


MUSICGEN_MODEL = Model(
    "meta",
    "musicgen",
    "Generate music from a prompt or melody (served locally by musicgen-local)",
    "public",
    "local",
    PUBLISHED_AT,
)
LOOPER_MODEL = Model(
    "andreasjansson",
    "musicgen-looper",
    "Fixed-bpm loops: variations of a loop that repeats seamlessly at exactly the tempo asked for "
    "(served locally by musicgen-local)",
    "public",
    "local",
    PUBLISHED_AT,
)
PUBLISHED_MODELS = (MUSICGEN_MODEL, LOOPER_MODEL)
PUBLISHED_VERSIONS = tuple(Version(v, MUSICGEN, PUBLISHED_AT) for v in PUBLISHED) + tuple(
    Version(v, LOOPER, PUBLISHED_AT) for v in LOOPER_PUBLISHED
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (name TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (id TEXT PRIMARY KEY, model TEXT NOT NULL, created_at TEXT NOT NULL,
                                     record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS versions_model ON versions (model, created_at);
"""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_name(part: str, what: str) -> str:
    if not isinstance(part, str) or not _NAME.fullmatch(part):
        raise UserError(
            f"`{what}` must be lowercase letters, digits, dashes, underscores or dots (at most 64, "
            f"starting and ending with a letter or digit), got {part!r}."
        )
    return part


class Registry:
    """The published models plus those kept in `db` (the data folder's database; None: in memory, for the CLI and
    Cog)."""

    def __init__(self, db: Database | None = None) -> None:
        self._db = db or Database()
        self._db.create(_SCHEMA)

    # -- models ------------------------------------------------------------------------------------
    def models(self) -> list[Model]:
        rows = self._db.read("SELECT record FROM models ORDER BY name")
        return [*PUBLISHED_MODELS, *(Model(**json.loads(r[0])) for r in rows)]

    def model(self, full_name: str) -> Model | None:
        published = next((m for m in PUBLISHED_MODELS if m.full_name == full_name), None)
        if published is not None:
            return published
        row = self._db.read_one("SELECT record FROM models WHERE name = ?", (full_name,))
        return Model(**json.loads(row[0])) if row else None

    def create_model(
        self,
        owner: str,
        name: str,
        description: str | None = None,
        visibility: str = "private",
        hardware: str = "local",
    ) -> Model:
        """Raises UserError for a bad name or visibility, FileExistsError when it exists (nothing is written),
        StorageFailed when the database refuses the write."""
        check_name(owner, "owner")
        check_name(name, "name")
        if any(m.full_name == f"{owner}/{name}" for m in PUBLISHED_MODELS):
            raise FileExistsError(f"{owner}/{name}")
        if visibility not in VISIBILITIES:
            raise UserError(f"`visibility` must be one of {', '.join(VISIBILITIES)}, got {visibility!r}.")
        model = Model(owner, name, description, visibility, hardware, _now())
        try:
            self._db.write(
                "the model", ("INSERT INTO models VALUES (?, ?)", (model.full_name, json.dumps(asdict(model))))
            )
        except StorageFailed as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise FileExistsError(model.full_name) from None
            raise
        return model

    # -- versions ----------------------------------------------------------------------------------
    def versions(self, full_name: str) -> list[Version]:
        """Newest first."""
        if any(m.full_name == full_name for m in PUBLISHED_MODELS):
            return [v for v in PUBLISHED_VERSIONS if v.model == full_name]
        rows = self._db.read("SELECT record FROM versions WHERE model = ? ORDER BY created_at DESC, id", (full_name,))
        return [Version(**json.loads(r[0])) for r in rows]

    def version(self, version_id: str) -> Version | None:
        found = next((v for v in PUBLISHED_VERSIONS if v.id == version_id), None)
        if found is not None:
            return found
        row = self._db.read_one("SELECT record FROM versions WHERE id = ?", (version_id,))
        return Version(**json.loads(row[0])) if row else None

    def add_version(self, version: Version) -> Version:
        record = (version.id, version.model, version.created_at, json.dumps(asdict(version)))
        self._db.write("the version", ("INSERT INTO versions VALUES (?, ?, ?, ?)", record))
        return version

    def delete_version(self, version_id: str) -> Version:
        """The version removed from the registry (its weights stay with the training that made them). Raises
        LookupError when there is none, UserError for a published version. Who may still use it (a deployment) is
        the caller's to check."""
        version = self.version(version_id)
        if version is None:
            raise LookupError(version_id)
        if not version.trained:
            raise UserError(f"Version {version_id} is one of {MUSICGEN}'s published versions; it cannot be deleted.")
        self._db.write("the deletion of the version", ("DELETE FROM versions WHERE id = ?", (version_id,)))
        return version

    def delete_model(self, full_name: str) -> None:
        """Raises LookupError when there is none, UserError for meta/musicgen or a model that still has versions
        (as on Replicate: delete them first)."""
        model = self.model(full_name)
        if model is None:
            raise LookupError(full_name)
        if full_name == MUSICGEN:
            raise UserError(f"{MUSICGEN} is published by this server; it cannot be deleted.")
        if self.versions(full_name):
            raise UserError(
                f"{full_name} still has versions; delete them first (DELETE /v1/models/{full_name}/versions/<id>)."
            )
        self._db.write("the deletion of the model", ("DELETE FROM models WHERE name = ?", (full_name,)))

    def latest(self, full_name: str) -> Version | None:
        versions = self.versions(full_name)
        return versions[0] if versions else None

    def resolve(self, ref: str | None) -> Version:
        """`<id>`, `owner/name:<id>` or `owner/name` (its latest version); None: meta/musicgen's latest.
        Raises LookupError with a message naming what exists."""
        if ref is None:
            return PUBLISHED_VERSIONS[0]
        name, colon, version_id = ref.partition(":")
        if not colon:
            if "/" not in ref:
                found = self.version(ref)
                if found is None:
                    raise LookupError(
                        f"Invalid version or not permitted: {ref!r}. This server has {', '.join(self.describe())}."
                    )
                return found
            latest = self.latest(ref)
            if latest is None:
                raise LookupError(
                    f"Model {ref!r} does not exist or has no versions yet (train one with "
                    "POST /v1/models/meta/musicgen/versions/<id>/trainings)."
                )
            return latest
        found = self.version(version_id)
        if found is None or found.model != name:
            raise LookupError(
                f"Invalid version or not permitted: {ref!r}. This server has {', '.join(self.describe())}."
            )
        return found

    def describe(self) -> list[str]:
        """Every version, `owner/name:id`, for messages."""
        rows = self._db.read("SELECT model, id FROM versions ORDER BY created_at")
        return [f"{v.model}:{v.id}" for v in PUBLISHED_VERSIONS] + [f"{m}:{v}" for m, v in rows]

    def close(self) -> None:
        self._db.close()
