"""Finding models and versions by text, for `QUERY /v1/models` and `GET /v1/search`.

Every word of the query must appear (case-insensitive, as a part of a word) in something of the model: its
`owner/name` (worth 3), a version's id or the training that made it (worth 2), its description or its tags
(worth 1: `published` and what it does, or `fine-tune` with the kind, `lora` or `full`, and the model_version
it was tuned from). A model's score is what its words found are worth; the best come first. An empty query
finds every model.
"""

from __future__ import annotations

from dataclasses import dataclass

from .registry import LOOPER, MUSICGEN, Model, Registry, Version

NAME, VERSION, TEXT = 3, 2, 1
PUBLISHED_MODELS = {MUSICGEN: ["text-to-music", "melody"], LOOPER: ["text-to-music", "loops"]}


@dataclass(frozen=True)
class Found:
    model: Model
    versions: list[Version]  # newest first
    tags: list[str]
    score: int

    @property
    def description(self) -> str:
        """The model's own description, or one said from its versions."""
        if self.model.description:
            return self.model.description
        kinds = ", ".join(t for t in self.tags if t not in ("fine-tune", "published"))
        count = len(self.versions)
        return f"{count} fine-tuned version{'s' if count != 1 else ''} of {MUSICGEN}" + (f" ({kinds})" if kinds else "")


def tags(model: Model, versions: list[Version]) -> list[str]:
    """A published model's (this server publishes meta/musicgen and the looper), or a model's fine-tunes'."""
    if model.full_name in PUBLISHED_MODELS:
        return ["published", *PUBLISHED_MODELS[model.full_name]]
    kinds = sorted({v.kind for v in versions if v.kind})
    bases = sorted({v.base for v in versions if v.base})
    return ["fine-tune", *kinds, *bases] if versions else []


def score(words: list[str], fields: list[tuple[str, int]]) -> int | None:
    """What the words are worth in these (text, worth) fields; None when one of them is found in none."""
    total = 0
    for word in words:
        worth = max((w for text, w in fields if word in text), default=0)
        if not worth:
            return None
        total += worth
    return total


def search(registry: Registry, query: str, limit: int | None = None) -> list[Found]:
    words = query.lower().split()
    found = []
    for model in registry.models():
        versions = registry.versions(model.full_name)
        model_tags = tags(model, versions)
        fields = [
            (model.full_name.lower(), NAME),
            ((model.description or "").lower(), TEXT),
            (" ".join(model_tags), TEXT),
            *((f"{v.id} {v.training or ''}".lower(), VERSION) for v in versions),
        ]
        worth = score(words, fields)
        if worth is not None:
            found.append(Found(model, versions, model_tags, worth))
    found.sort(key=lambda f: (-f.score, f.model.full_name))
    return found[:limit] if limit is not None else found
