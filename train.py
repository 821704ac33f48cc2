"""Cog's `train`: fine-tune MusicGen on your own music, returning the weights `predict.py` serves.

Every Input comes from musicgen_local.training.params (the one definition of the training inputs, the
same the trainings API and `musicgen-local train` take); the trainer is the engine's own. The tar it
returns is what `predict.py` loads from COG_WEIGHTS, so a model trained at home can be pushed to
Replicate, and one trained on Replicate served at home.
"""

import tempfile

from cog import BaseModel, Input, Path

from musicgen_local.engine.api import Log, Progress
from musicgen_local.engine.train_here import train_here
from musicgen_local.settings import Settings
from musicgen_local.training.params import cog_train_input_kwargs as spec


class TrainingOutput(BaseModel):
    weights: Path


def train(
    dataset_path: Path = Input(**spec("dataset_path")),
    auto_labeling: bool = Input(**spec("auto_labeling")),
    drop_vocals: bool = Input(**spec("drop_vocals")),
    one_same_description: str | None = Input(**spec("one_same_description")),
    model_version: str = Input(**spec("model_version")),
    epochs: int = Input(**spec("epochs")),
    updates_per_epoch: int = Input(**spec("updates_per_epoch")),
    batch_size: int = Input(**spec("batch_size")),
    lr: float = Input(**spec("lr")),
    lr_scheduler: str = Input(**spec("lr_scheduler")),
    warmup: int = Input(**spec("warmup")),
    cfg_p: float = Input(**spec("cfg_p")),
    lora_rank: int = Input(**spec("lora_rank")),
    lora_alpha: float | None = Input(**spec("lora_alpha")),
    seed: int | None = Input(**spec("seed")),
) -> TrainingOutput:
    inputs = dict(locals())
    inputs["dataset_path"] = str(dataset_path)
    inputs["lr"], inputs["cfg_p"] = float(lr), float(cfg_p)
    if lora_alpha is not None:
        inputs["lora_alpha"] = float(lora_alpha)
    out = Path(tempfile.mkdtemp(prefix="musicgen-train-")) / "weights.tar"
    train_here(Settings.from_env(), inputs, out, _show)
    return TrainingOutput(weights=Path(out))


def _show(event) -> None:
    if isinstance(event, Log):
        print(event.line)
    elif isinstance(event, Progress) and event.done == event.total:
        print(f"{event.done} / {event.total} updates")
