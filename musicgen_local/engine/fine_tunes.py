"""The host tier of fine-tunes: tars read into host memory (in the prepare pool, never on a device loop), kept for
the next request that names them, the least recently used dropped past MUSICGEN_HOST_LORAS. A LoRA's tensors go
from here into a device's adapter slots when its request is admitted (engine/fast/adapters.py: the device tier)."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path

from .. import tuned
from ..errors import UserError
from ..settings import Settings
from .fast import Lora
from .job import Job


class FineTunes:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._read: OrderedDict[str, tuple[tuned.Tuned, dict | None]] = OrderedDict()  # weights -> (it, LoRA tensors)
        self._names: dict[str, str] = {}  # weights -> what it is called (Request.tune, or its folder's name)
        self._lock = threading.Lock()  # the prepare pool's threads read at once

    def apply(self, job: Job) -> None:
        """The fine-tune `job.request.weights` names, on the job: a LoRA decodes in its base's batch, a full
        fine-tune is a model of its own."""
        job.lora, job.full_tune = self.of(job.request.weights, job.request.model_version, job.request.tune)

    def of(self, weights: str, model_version: str, tune: str | None) -> tuple[Lora | None, str | None]:
        """A fine-tune of `model_version` as the engine runs it: a LoRA's adapter (named `tune`, else by its
        folder), or a full fine-tune's unpacked folder."""
        fine_tune, adapters = self.read(weights, model_version)
        name = tune or fine_tune.root.name
        with self._lock:
            self._names[weights] = name
        if fine_tune.kind == "lora":
            return Lora(name, adapters, fine_tune.scale), None
        return None, str(fine_tune.root)

    def read(self, weights: str, model_version: str) -> tuple[tuned.Tuned, dict | None]:
        """The fine-tune `weights` names and its LoRA tensors (read once, kept here); it must be one of
        `model_version`."""
        fine_tune, adapters = self._get(weights)
        if fine_tune.base != model_version:
            raise UserError(
                f"These weights are a fine-tune of `{fine_tune.base}`; they cannot decode `{model_version}`."
            )
        return fine_tune, adapters

    def _get(self, weights: str) -> tuple[tuned.Tuned, dict | None]:
        with self._lock:
            if weights in self._read:
                self._read.move_to_end(weights)
                return self._read[weights]
        found = tuned.read(weights, unpack_to=self._unpack_folder(weights))
        entry = (found, found.adapters() if found.kind == "lora" else None)
        with self._lock:
            self._read[weights] = entry
            while len(self._read) > max(1, self.settings.host_loras):
                self._names.pop(self._read.popitem(last=False)[0], None)
        return entry

    def resident(self) -> list[str]:
        """The LoRA fine-tunes held on the host, most recently used first (for /health-check)."""
        with self._lock:
            return [self._names.get(w, "") for w, (_, tensors) in reversed(self._read.items()) if tensors is not None]

    def _unpack_folder(self, weights: str) -> Path:
        """Where a fine-tune's tar is unpacked: under the data folder, named by the tar's path and size."""
        path = Path(weights)
        stamp = f"{path.resolve()}:{path.stat().st_size if path.is_file() else 0}"
        return Path(self.settings.data_dir) / "tuned" / hashlib.sha256(stamp.encode()).hexdigest()[:24]
