"""A training in this process, for the doors that have no server: `musicgen-local train` and Cog's train.py.

The engine (`LocalEngine.train`) does the work exactly as for the trainings API; this only runs it to its
end, showing its events, and returns the fine-tune's tar.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..settings import Settings


def train_here(
    settings: Settings, inputs: dict[str, Any], out: Path, on_event: Callable[[Any], None], work_dir: Path | None = None
) -> Path:
    """Train with `inputs` (the training schema's; `dataset_path` a local file, URL or data: URI) and write the
    fine-tune's tar at `out`. A `work_dir` kept between calls resumes an interrupted training."""
    from ..training.params import parse_training_input
    from . import load_engine
    from .api import Failed, Trained, TrainingRequest, terminal_error

    params = parse_training_input(inputs)  # pydantic.ValidationError for a schema violation
    dataset = params.dataset_path
    if not dataset.startswith(("http://", "https://", "data:")):
        dataset = str(Path(dataset).expanduser().resolve())
    with tempfile.TemporaryDirectory(prefix="musicgen-train-") as scratch:
        work = work_dir or Path(scratch) / "work"
        engine = load_engine(settings.with_(warmup="none", data_dir=Path(scratch)))  # loads only what it trains
        try:
            run = engine.train(TrainingRequest(params, dataset, str(work), str(out)))
            for event in run:
                on_event(event)
                if isinstance(event, Trained):
                    return Path(event.weights)
                if isinstance(event, Failed):
                    raise terminal_error(event)
            raise terminal_error(event)
        finally:
            engine.close()
