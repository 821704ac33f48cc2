"""The training object, shaped as Replicate's v1 API returns it (replicate-python's `Training`).

A Training is stored and driven like a prediction (same store, dispatcher, webhooks, Cancel-After,
restarts); what differs is its `destination`, its output (the new version and a URL of its weights)
and its URLs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .prediction import Prediction, iso

WEIGHTS_FILE = "weights.tar"


@dataclass
class Training(Prediction):
    destination: str = ""  # "owner/name": the model that gets the new version
    output_version: str | None = None  # the version id the training made
    weights_file: str | None = None  # its fine-tune, inside the training's folder
    training_metrics: dict[str, float] = field(default_factory=dict)  # the trainer's (final loss, steps)

    def to_json(self, base_url: str | None = None, inline_dir: Any = None) -> dict[str, Any]:
        base = (base_url or self.base_url).rstrip("/")
        output = None
        if self.output_version and self.weights_file:
            output = {
                "version": f"{self.destination}:{self.output_version}",
                "weights": f"{base}/delivery/trainings/{self.id}/{self.weights_file}",
            }
        urls = {"get": f"{base}/v1/trainings/{self.id}", "cancel": f"{base}/v1/trainings/{self.id}/cancel"}
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "destination": self.destination,
            "input": self.input,
            "logs": self.logs,
            "output": output,
            "data_removed": self.data_removed,
            "error": self.error,
            "status": self.status,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "completed_at": iso(self.completed_at),
            "source": "api",
            "metrics": {**self.metrics(), **self.training_metrics},
            "urls": urls,
        }
