"""The andreasjansson/musicgen-looper inputs and output, defined once (as published on Replicate).

`FIELDS` is the looper's input schema exactly as its version pages list it (names, order, types,
defaults, bounds, descriptions verbatim, typos included: "Model to use for generation. ." and
"lower-varience"). It reuses `musicgen_local.schema.Field`, so the pydantic model (422s), the
Cog-shaped OpenAPI, Cog `Input` arguments and CLI `-i key=value` parsing come from the same
derivations meta/musicgen's schema uses. `OUTPUT_SCHEMA` is the `Outputs` object of versions
f8140d04/fd5be669: `variation_01` ... `variation_20`, each a URI, none required.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ..errors import UserError
from ..registry import LOOPER_VERSIONS
from ..schema import MAX_PROMPT_CHARS, Field, check_sampling, input_model, openapi_input_properties

MAX_VARIATIONS = 20
MIN_BPM, MAX_BPM = 40, 300

FIELDS: tuple[Field, ...] = (
    Field("prompt", str, "A description of the music you want to generate.", required=True),
    Field("bpm", float, "Tempo in beats per minute", 140, minimum=MIN_BPM, maximum=MAX_BPM),
    Field("variations", int, "Number of variations to generate", 4, minimum=1, maximum=MAX_VARIATIONS),
    Field("max_duration", int, "Maximum duration of the generated loop in seconds.", 8, minimum=2, maximum=20),
    Field("model_version", str, "Model to use for generation. .", "medium", LOOPER_VERSIONS),
    Field("top_k", int, "Reduces sampling to the k most likely tokens.", 250),
    Field(
        "top_p",
        float,
        "Reduces sampling to tokens with cumulative probability of p. "
        "When set to `0` (default), top_k sampling is used.",
        0,
    ),
    Field(
        "temperature",
        float,
        "Controls the 'conservativeness' of the sampling process. Higher temperature means more diversity.",
        1,
    ),
    Field(
        "classifier_free_guidance",
        int,
        "Increases the influence of inputs on the output. Higher values produce "
        "lower-varience outputs that adhere more closely to inputs.",
        3,
    ),
    Field("output_format", str, "Output format for generated audio.", "wav", ("wav", "mp3")),
    Field("seed", int, "Seed for random number generator. If None or -1, a random seed will be used.", -1),
)
FIELDS_BY_NAME = {f.name: f for f in FIELDS}


def output_key(index: int) -> str:
    """The output field of the `index`-th loop (0-based): variation_01 ... variation_20."""
    return f"variation_{index + 1:02d}"


OUTPUT_SCHEMA: dict[str, Any] = {
    "title": "Outputs",
    "type": "object",
    "properties": {
        output_key(i): {"type": "string", "format": "uri", "title": f"Variation {i + 1:02d}"}
        for i in range(MAX_VARIATIONS)
    },
}

LooperInput: type[BaseModel] = input_model("LooperInput", FIELDS, __name__)


def parse_input(data: dict[str, Any]) -> BaseModel:
    """Schema-validate a raw input dict; raises pydantic.ValidationError (a 422 at the HTTP layer)."""
    return LooperInput.model_validate(data)


def openapi_schema() -> dict[str, Any]:
    """The looper's Cog-shaped OpenAPI document (Input, Outputs, the enum components)."""
    props, enums = openapi_input_properties(FIELDS)
    required = [f.name for f in FIELDS if f.required]
    return {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": "0.1.0"},
        "paths": {},
        "components": {
            "schemas": {
                "Input": {"type": "object", "title": "Input", "properties": props, "required": required},
                "Output": OUTPUT_SCHEMA,
                **enums,
            }
        },
    }


def check_semantics(inp: BaseModel) -> None:
    """Raise UserError for a well-typed request that cannot be served (a failed prediction, never a 500)."""
    if len(inp.prompt) > MAX_PROMPT_CHARS:
        raise UserError(
            f"`prompt` is {len(inp.prompt)} characters long; this server reads at most {MAX_PROMPT_CHARS}. "
            "Shorten the description."
        )
    check_sampling(inp)
