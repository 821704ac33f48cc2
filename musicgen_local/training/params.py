"""The training inputs, defined once (as schema.py defines the prediction inputs).

Names and meanings are those of the hosted fine-tuner users know (sakemin/cog-musicgen-fine-tuner,
the fine-tuner Replicate hosts) where they make sense here. Where ours differ, the description
says so: the optimizer is AdamW, so `lr` is AdamW's learning rate (the hosted one's D-Adaptation
takes `lr = 1`); `lora_rank` is ours (LoRA by default, 0 = a full fine-tune); all four LM
variants, `large` and stereo included, can be trained. Everything else is derived from `FIELDS`: the
pydantic model (422s), Cog's `Input`s of train.py, the OpenAPI schema, the CLI's `-i key=value`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ..registry import LM_VERSIONS
from ..schema import (
    MAX_PROMPT_CHARS,
    Field,
    cog_input_kwargs,
    input_model,
    openapi_input_properties,
    parse_cli_pairs,
)

SCHEDULERS = ("cosine", "linear", "constant")
# 16: the rank dreamboothing recipes use; its adapters are ~0.4 % of `large` (13 M parameters), so what
# a LoRA training of `large` holds on a 24 GB card is the float16 weights (6.6 GB), the activations of a
# micro-batch, and little else.
DEFAULT_RANK = 16
# A description is read whole by T5 as a prompt is (its attention grows with the square of its tokens: a 40 KB
# description took the server past 10 GB), so it has a prompt's cap; the dataset's .txt files are held to it too.
MAX_DESCRIPTION_CHARS = MAX_PROMPT_CHARS
MAX_SEED = 2**32 - 1  # the trainer seeds Python's and torch's generators with it; past 2^64 torch refuses it

FIELDS: tuple[Field, ...] = (
    Field(
        "dataset_path",
        str,
        "Your music: a zip, tar or tar.gz of audio files, or one audio file (wav, mp3, "
        "flac, ogg...). A `.txt` file beside an audio file (same name) is its description. Long files are cut "
        "into 30 s pieces.",
        format="uri",
        required=True,
    ),
    Field(
        "auto_labeling",
        bool,
        "Add the tempo (bpm) and key estimated from each piece to its description. "
        "Genre, mood and instrument labels are not offered: the models that estimate them cannot be shipped.",
        True,
    ),
    Field(
        "drop_vocals",
        bool,
        "Remove the vocals with htdemucs before training, so the model learns the instruments.",
        True,
    ),
    Field(
        "one_same_description",
        str,
        f"One description for every file (replaces the .txt files); at most {MAX_DESCRIPTION_CHARS} characters.",
        max_length=MAX_DESCRIPTION_CHARS,
    ),
    Field("model_version", str, "The model to fine-tune.", "large", LM_VERSIONS),
    Field("epochs", int, "Passes over `updates_per_epoch` updates.", 3, minimum=1, maximum=1000),
    Field("updates_per_epoch", int, "Optimizer updates per epoch.", 100, minimum=1, maximum=100_000),
    Field(
        "batch_size",
        int,
        "Pieces per optimizer update (gradients are accumulated over micro-batches to reach it).",
        16,
        minimum=1,
        maximum=64,
    ),
    Field(
        "lr",
        float,
        "AdamW's learning rate (not D-Adaptation's: use 1e-4 for LoRA, 1e-5 for a full fine-tune).",
        1e-4,
        maximum=1.0,
        above=0.0,
    ),
    Field("lr_scheduler", str, "How the learning rate decays after the warmup.", "cosine", SCHEDULERS),
    Field("warmup", int, "Updates over which the learning rate rises linearly from 0.", 8, minimum=0, maximum=100_000),
    Field(
        "cfg_p",
        float,
        "Probability of dropping the description during training (condition dropout), "
        "which keeps classifier-free guidance working.",
        0.3,
        minimum=0.0,
        maximum=1.0,
    ),
    Field(
        "lora_rank",
        int,
        "Rank of the LoRA adapters; 0 fine-tunes every weight of the language model "
        "(a full fine-tune, as large as the model).",
        DEFAULT_RANK,
        minimum=0,
        maximum=256,
    ),
    Field(
        "lora_alpha", float, "LoRA's scale numerator (the update is alpha / rank x B A); default 2 x rank.", minimum=0.0
    ),
    Field(
        "seed",
        int,
        "Seed for the order of pieces, crops and dropout. If None or -1, a random seed is used.",
        minimum=-1,
        maximum=MAX_SEED,
    ),
)
FIELDS_BY_NAME = {f.name: f for f in FIELDS}
OUTPUT_SCHEMA = {
    "type": "object",
    "title": "TrainingOutput",
    "required": ["weights"],
    "properties": {"weights": {"type": "string", "format": "uri", "title": "Weights"}},
}

TrainingInput: type[BaseModel] = input_model("TrainingInput", FIELDS, __name__)


def parse_training_input(data: dict[str, Any]) -> BaseModel:
    """Schema-validate a raw training input; raises pydantic.ValidationError (a 422 at the HTTP layer)."""
    return TrainingInput.model_validate(data)


def cog_train_input_kwargs(name: str) -> dict[str, Any]:
    return cog_input_kwargs(name, FIELDS_BY_NAME)


def parse_training_cli_pairs(pairs: list[str]) -> dict[str, Any]:
    return parse_cli_pairs(pairs, FIELDS_BY_NAME)


def training_openapi_schema() -> dict[str, Any]:
    """The TrainingInput and TrainingOutput components, in Cog's layout."""
    props, enums = openapi_input_properties(FIELDS)
    required = [f.name for f in FIELDS if f.required]
    return {
        "TrainingInput": {"type": "object", "title": "TrainingInput", "properties": props, "required": required},
        "TrainingOutput": OUTPUT_SCHEMA,
        **enums,
    }
