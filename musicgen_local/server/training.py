"""The training object, shaped as Replicate's v1 API returns it (replicate-python's `Training`).

A Training is a kind of run (server/runs.py): stored and driven like a prediction; what differs is its
`destination`, its output (the new version and a URL of its weights), its metrics (the trainer's) and its URLs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .prediction import Prediction

WEIGHTS_FILE = "weights.tar"


@dataclass
class Training(Prediction):
    PATH: ClassVar[str] = "trainings"
    INLINE_OUTPUT: ClassVar[bool] = False
    KEPT_AFTER_RETENTION: ClassVar[tuple[str, ...]] = (WEIGHTS_FILE,)

    destination: str = ""  # "owner/name": the model that gets the new version
    output_version: str | None = None  # the version id the training made
    weights_file: str | None = None  # its fine-tune, inside the training's folder
    training_metrics: dict[str, float] = field(default_factory=dict)  # the trainer's (final loss, steps)

    def _fields(self) -> dict[str, Any]:
        return {**super()._fields(), "destination": self.destination}

    def _output(self, base: str, inline_dir: Any) -> dict[str, str] | None:
        if not (self.output_version and self.weights_file):
            return None
        return {
            "version": f"{self.destination}:{self.output_version}",
            "weights": f"{base}/delivery/trainings/{self.id}/{self.weights_file}",
        }

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), **self.training_metrics}

    def expire(self) -> None:
        self.input, self.data_removed = {}, True  # its weights stay: the version it made serves them
