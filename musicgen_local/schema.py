"""The meta/musicgen inputs, defined once.

`FIELDS` is the single source of truth (Replicate version b05b1dff, encode-decode included:
names, order, types, defaults, choices, minimums and descriptions verbatim). Everything else is
derived from it: the pydantic model that validates requests (422s), the Cog `Input`s of
predict.py, the OpenAPI schema served by /v1/models, and the CLI's `-i key=value` parsing.
Semantic checks come after, with Replicate's own messages where Replicate has one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, create_model
from pydantic import Field as PydanticField

from .errors import UserError
from .registry import ENCODE_DECODE, MODEL_VERSIONS, PRESETS

_REQUIRED = object()
CODEBOOK_SIZE = 2048  # tokens each MusicGen codebook has: top_k past it has nothing more to keep
# T5 reads a prompt whole (audiocraft does not truncate it), and its attention grows with the square of the
# tokens: a 10 KB prompt took 4.5 GB and stalled the device for 13 s. MusicGen was trained on descriptions of
# a few dozen words; 2000 characters is about 500 T5 tokens of English, T5's own training length (512).
MAX_PROMPT_CHARS = 2000


@dataclass(frozen=True)
class Field:
    name: str
    kind: type  # str, int, float or bool
    description: str
    default: Any = None  # None: optional with no default
    choices: tuple[str, ...] | None = None
    minimum: int | float | None = None
    format: str | None = None
    maximum: int | float | None = None
    above: float | None = None  # exclusive minimum (a learning rate above 0)
    required: bool = False
    max_length: int | None = None  # a string's most characters

    @property
    def json_type(self) -> str:
        return {str: "string", int: "integer", float: "number", bool: "boolean"}[self.kind]


FIELDS: tuple[Field, ...] = (
    Field(
        "model_version",
        str,
        "Model to use for generation. If set to 'encode-decode', the audio specified via "
        "'input_audio' will simply be encoded and then decoded.",
        "stereo-melody-large",
        MODEL_VERSIONS,
    ),
    Field("prompt", str, "A description of the music you want to generate."),
    Field(
        "input_audio",
        str,
        "An audio file that will influence the generated music. If `continuation` is `True`, "
        "the generated music will be a continuation of the audio file. Otherwise, the generated music will mimic "
        "the audio file's melody.",
        format="uri",
    ),
    Field("duration", int, "Duration of the generated audio in seconds.", 8),
    Field(
        "continuation",
        bool,
        "If `True`, generated music will continue from `input_audio`. Otherwise, generated "
        "music will mimic `input_audio`'s melody.",
        False,
    ),
    Field("continuation_start", int, "Start time of the audio file to use for continuation.", 0, minimum=0),
    Field(
        "continuation_end",
        int,
        "End time of the audio file to use for continuation. If -1 or None, will default to the end of the audio clip.",
        minimum=0,
    ),
    Field(
        "multi_band_diffusion",
        bool,
        "If `True`, the EnCodec tokens will be decoded with MultiBand Diffusion. Only works with non-stereo models.",
        False,
    ),
    Field(
        "normalization_strategy",
        str,
        "Strategy for normalizing audio.",
        "loudness",
        ("loudness", "clip", "peak", "rms"),
    ),
    Field("top_k", int, "Reduces sampling to the k most likely tokens.", 250),
    Field(
        "top_p",
        float,
        "Reduces sampling to tokens with cumulative probability of p. When set to  `0` (default), "
        "top_k sampling is used.",
        0.0,
    ),
    Field(
        "temperature",
        float,
        "Controls the 'conservativeness' of the sampling process. Higher temperature means more diversity.",
        1.0,
    ),
    Field(
        "classifier_free_guidance",
        int,
        "Increases the influence of inputs on the output. Higher values produce "
        "lower-varience outputs that adhere more closely to inputs.",
        3,
    ),
    Field("output_format", str, "Output format for generated audio.", "wav", ("wav", "mp3")),
    Field("seed", int, "Seed for random number generator. If None or -1, a random seed will be used."),
)
FIELDS_BY_NAME = {f.name: f for f in FIELDS}
OUTPUT_SCHEMA = {"type": "string", "format": "uri", "title": "Output"}


# ---------------------------------------------------------------------------------------------
# Derived: the pydantic model (schema validation, 422 on violation)

_STRICT = {str: StrictStr, int: StrictInt, bool: StrictBool, float: float}


def _pydantic_field(f: Field) -> tuple[Any, Any]:
    annotation: Any = Literal[f.choices] if f.choices else _STRICT[f.kind]  # type: ignore[valid-type]
    if f.default is None and not f.required:
        annotation = annotation | None
    default = ... if f.required else f.default
    limits = {"ge": f.minimum, "le": f.maximum, "gt": f.above, "max_length": f.max_length}
    return annotation, PydanticField(default, description=f.description, **limits)


def input_model(name: str, fields: tuple[Field, ...], module: str = __name__) -> type[BaseModel]:
    """The pydantic model of a field list. Unknown fields are dropped silently, as Replicate and Cog do. `module`
    is where the model is bound to `name`: pickle finds the class there (a training's inputs cross to Ray)."""
    return create_model(
        name,
        __config__=ConfigDict(extra="ignore", strict=True),
        __module__=module,
        **{f.name: _pydantic_field(f) for f in fields},
    )


PredictionInput: type[BaseModel] = input_model("PredictionInput", FIELDS)


def parse_input(data: dict[str, Any]) -> BaseModel:
    """Schema-validate a raw input dict; raises pydantic.ValidationError (a 422 at the HTTP layer)."""
    return PredictionInput.model_validate(data)


# ---------------------------------------------------------------------------------------------
# Derived: OpenAPI (as cog emits it) and Cog Input(...) arguments


def _title(name: str) -> str:
    return name.replace("_", " ").title()


def openapi_input_properties(fields: tuple[Field, ...] = FIELDS) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Input object's properties and the enum component schemas, in Cog's layout."""
    props: dict[str, Any] = {}
    enums: dict[str, Any] = {}
    for order, f in enumerate(fields):
        prop: dict[str, Any] = {"title": _title(f.name), "description": f.description, "x-order": order}
        if f.choices:
            enums[f.name] = {
                "title": f.name,
                "description": "An enumeration.",
                "enum": list(f.choices),
                "type": f.json_type,
            }
            prop["allOf"] = [{"$ref": f"#/components/schemas/{f.name}"}]
        else:
            prop["type"] = f.json_type
        if f.format:
            prop["format"] = f.format
        if f.default is not None:
            prop["default"] = f.default
        if f.minimum is not None:
            prop["minimum"] = f.minimum
        if f.maximum is not None:
            prop["maximum"] = f.maximum
        if f.above is not None:
            prop["exclusiveMinimum"] = f.above
        if f.max_length is not None:
            prop["maxLength"] = f.max_length
        props[f.name] = prop
    return props, enums


def openapi_schema() -> dict[str, Any]:
    """A Cog-shaped OpenAPI document (what coglet reads from .cog/openapi_schema.json and what
    Replicate serves as a version's `openapi_schema`)."""
    props, enums = openapi_input_properties()
    return {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": "0.1.0"},
        "paths": {},
        "components": {
            "schemas": {
                "Input": {"type": "object", "title": "Input", "properties": props, "required": []},
                "Output": OUTPUT_SCHEMA,
                **enums,
            }
        },
    }


def reference_json() -> dict[str, Any]:
    """The schema in the flat layout of tests/data/meta-musicgen-input.json (Replicate's own), for comparisons."""
    out = []
    for f in FIELDS:
        item: dict[str, Any] = {"name": f.name, "type": f.json_type}
        if f.format:
            item["format"] = f.format
        if f.default is not None:
            item["default"] = f.default
        if f.minimum is not None:
            item["minimum"] = f.minimum
        if f.choices:
            item["enum"] = list(f.choices)
        item["description"] = f.description
        out.append(item)
    return {"output": OUTPUT_SCHEMA, "required": [], "properties": out}


def cog_input_kwargs(name: str, fields: dict[str, Field] = FIELDS_BY_NAME) -> dict[str, Any]:
    """Arguments for `cog.Input(...)` for one field."""
    f = fields[name]
    kwargs: dict[str, Any] = {"description": f.description}
    if not f.required:
        kwargs["default"] = f.default
    if f.choices:
        kwargs["choices"] = list(f.choices)
    if f.minimum is not None:
        kwargs["ge"] = f.minimum
    if f.maximum is not None:
        kwargs["le"] = f.maximum
    if f.max_length is not None:
        kwargs["max_length"] = f.max_length
    return kwargs


# ---------------------------------------------------------------------------------------------
# Derived: CLI `-i key=value`


def parse_cli_pairs(pairs: list[str], fields: dict[str, Field] = FIELDS_BY_NAME) -> dict[str, Any]:
    """Turn `key=value` strings into typed inputs (like `cog predict -i`); `@path` means a file."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise UserError(f"Expected key=value, got {pair!r}.")
        f = fields.get(key)
        if f is None:
            raise UserError(f"Unknown input {key!r}. Inputs: {', '.join(fields)}.")
        out[key] = _coerce(f, raw)
    return out


def _coerce(f: Field, raw: str) -> Any:
    if f.kind is str:
        return raw[1:] if f.format == "uri" and raw.startswith("@") else raw
    if f.kind is bool:
        if raw.lower() in {"true", "1", "yes"}:
            return True
        if raw.lower() in {"false", "0", "no"}:
            return False
        raise UserError(f"{f.name} must be true or false, got {raw!r}.")
    try:
        return f.kind(json.loads(raw)) if f.kind is float else int(raw)
    except ValueError:
        raise UserError(f"{f.name} must be {'a number' if f.kind is float else 'an integer'}, got {raw!r}.") from None


# ---------------------------------------------------------------------------------------------
# Semantic checks: Replicate's messages verbatim where it has one, ours otherwise.


def check_semantics(inp: BaseModel, max_duration: int) -> None:
    """Raise UserError for a request that is well-typed but cannot be served.

    Replicate also refuses `multi_band_diffusion` on stereo models ("Multi-Band Diffusion is only
    available with non-stereo models."); we serve it, decoding left and right separately."""
    v = inp.model_version
    if inp.prompt is None and inp.input_audio is None:
        raise UserError("Must provide either prompt or input_audio")
    if inp.prompt is not None and len(inp.prompt) > MAX_PROMPT_CHARS:
        raise UserError(
            f"`prompt` is {len(inp.prompt)} characters long; this server reads at most "
            f"{MAX_PROMPT_CHARS} (about 500 T5 tokens, the length MusicGen's text encoder was trained "
            "on). Shorten the description."
        )
    if inp.continuation and not inp.input_audio:
        raise UserError("Must provide `input_audio` if continuation is `True`.")
    if v == ENCODE_DECODE and not inp.input_audio:
        raise UserError("`encode-decode` needs `input_audio`: it encodes that audio with EnCodec and decodes it back.")
    if PRESETS[v].lm and not PRESETS[v].melody and inp.input_audio and not inp.continuation:
        raise UserError(
            "`stereo-large` and `large` model does not support melody input. Set "
            "`model_version='stereo-melody-large'` or `model_version='melody-large'` to condition on audio input."
        )
    if inp.continuation_end is not None and inp.continuation_start > inp.continuation_end:
        raise UserError("`continuation_start` must be less than or equal to `continuation_end`")
    if v != ENCODE_DECODE and inp.duration < 1:
        raise UserError(f"`duration` must be at least 1 second, got {inp.duration}.")
    if v != ENCODE_DECODE and inp.duration > max_duration:
        raise UserError(
            f"`duration` must be at most {max_duration} seconds, got {inp.duration}. "
            "The server's limit is set by MUSICGEN_MAX_DURATION."
        )
    check_sampling(inp)


def check_sampling(inp: BaseModel) -> None:
    """The sampling inputs every MusicGen schema has (meta/musicgen's and the looper's)."""
    if not 0 <= inp.top_k <= CODEBOOK_SIZE:
        raise UserError(
            f"`top_k` must be from 0 to {CODEBOOK_SIZE} (the size of MusicGen's codebooks), got {inp.top_k}."
        )
    if not 0.0 <= inp.top_p <= 1.0:
        raise UserError(f"`top_p` must be between 0 and 1, got {inp.top_p}.")
    if inp.temperature <= 0:
        raise UserError(f"`temperature` must be greater than 0, got {inp.temperature}.")
