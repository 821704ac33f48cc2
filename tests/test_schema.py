"""The one schema: equal to Replicate's, what cog derives from predict.py, validation messages."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from musicgen_local import schema
from musicgen_local.errors import UserError

REFERENCE = json.loads((Path(__file__).parent / "data" / "meta-musicgen-input.json").read_text())


def test_schema_equals_replicate_reference():
    ours = schema.reference_json()
    assert ours["properties"] == REFERENCE["properties"]
    assert ours["output"] == REFERENCE["output"]
    assert ours["required"] == REFERENCE["required"] == []


def test_published_version_ids_are_the_ones_in_users_code():
    """Every other test takes the ids from the registry; this one holds them to Replicate's page."""
    from musicgen_local.registry import LATEST, PUBLISHED

    assert LATEST == "b05b1dff1d8c6dc63d14b0cdb42135378dcb87f6373b0d3d341ede46e59e2b38"
    assert PUBLISHED == (LATEST, "671ac645ce5e552cc63a54a2bbff63fcf798043055d2dac5fc9e36a837eedcfb")


def test_cog_derives_the_reference_schema_from_predict_py():
    """What `cog build` would publish: the Input fields cog's inspector reads from predict.py."""
    from cog._inspector import create_predictor

    info = create_predictor("predict", "Predictor")
    derived = []
    for name, f in sorted(info.inputs.items(), key=lambda item: item[1].order):
        item = {"name": name, "type": f.type.json_type()["type"]}
        if f.type.json_type().get("format"):
            item["format"] = f.type.json_type()["format"]
        if f.default is not None:
            item["default"] = f.default
        if f.ge is not None:
            item["minimum"] = f.ge
        if f.choices:
            item["enum"] = list(f.choices)
        item["description"] = f.description
        derived.append(item)
    assert derived == REFERENCE["properties"]
    assert info.output.json_type() == REFERENCE["output"]


def test_openapi_schema_is_cog_shaped():
    doc = schema.openapi_schema()
    inp = doc["components"]["schemas"]["Input"]
    assert list(inp["properties"]) == [p["name"] for p in REFERENCE["properties"]]
    assert inp["properties"]["model_version"]["allOf"] == [{"$ref": "#/components/schemas/model_version"}]
    assert doc["components"]["schemas"]["model_version"]["enum"][-1] == "encode-decode"
    assert inp["properties"]["continuation_end"]["minimum"] == 0
    assert inp["properties"]["seed"]["x-order"] == 14
    assert doc["components"]["schemas"]["Output"] == REFERENCE["output"]


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"duration": "8"}, "duration"),
        ({"duration": 8.5}, "duration"),
        ({"model_version": "small"}, "model_version"),
        ({"continuation_end": -1}, "continuation_end"),
        ({"continuation_start": -2}, "continuation_start"),
        ({"continuation": "true"}, "continuation"),
        ({"output_format": "flac"}, "output_format"),
        ({"normalization_strategy": "lufs"}, "normalization_strategy"),
        ({"top_p": "high"}, "top_p"),
    ],
)
def test_schema_violations_name_the_field(bad, field):
    with pytest.raises(ValidationError) as exc:
        schema.parse_input(bad)
    assert [e["loc"] for e in exc.value.errors()] == [(field,)]


def test_defaults_and_unknown_fields_dropped():
    inp = schema.parse_input({"prompt": "x", "bogus": 1, "top_p": 1})
    assert inp.model_dump() == {
        "model_version": "stereo-melody-large",
        "prompt": "x",
        "input_audio": None,
        "duration": 8,
        "continuation": False,
        "continuation_start": 0,
        "continuation_end": None,
        "multi_band_diffusion": False,
        "normalization_strategy": "loudness",
        "top_k": 250,
        "top_p": 1.0,
        "temperature": 1.0,
        "classifier_free_guidance": 3,
        "output_format": "wav",
        "seed": None,
    }


MELODY_MSG = (
    "`stereo-large` and `large` model does not support melody input. Set "
    "`model_version='stereo-melody-large'` or `model_version='melody-large'` to condition on audio input."
)


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({}, "Must provide either prompt or input_audio"),
        ({"prompt": "x", "continuation": True}, "Must provide `input_audio` if continuation is `True`."),
        ({"model_version": "large", "input_audio": "a.wav"}, MELODY_MSG),
        ({"model_version": "stereo-large", "input_audio": "a.wav"}, MELODY_MSG),
        (
            {"prompt": "x", "input_audio": "a.wav", "continuation_start": 5, "continuation_end": 2},
            "`continuation_start` must be less than or equal to `continuation_end`",
        ),
        ({"prompt": "x", "duration": 0}, "`duration` must be at least 1 second, got 0."),
        (
            {"prompt": "x", "duration": 301},
            ("`duration` must be at most 300 seconds, got 301. The server's limit is set by MUSICGEN_MAX_DURATION."),
        ),
        ({"prompt": "x", "top_k": -1}, "`top_k` must be from 0 to 2048 (the size of MusicGen's codebooks), got -1."),
        (
            {"prompt": "x", "top_k": 2049},
            "`top_k` must be from 0 to 2048 (the size of MusicGen's codebooks), got 2049.",
        ),
        ({"prompt": "x", "top_p": 1.5}, "`top_p` must be between 0 and 1, got 1.5."),
        ({"prompt": "x", "top_p": -0.1}, "`top_p` must be between 0 and 1, got -0.1."),
        ({"prompt": "x", "temperature": 0}, "`temperature` must be greater than 0, got 0.0."),
        (
            {"model_version": "encode-decode", "prompt": "x"},
            "`encode-decode` needs `input_audio`: it encodes that audio with EnCodec and decodes it back.",
        ),
    ],
)
def test_semantic_errors_carry_replicates_messages(inputs, message):
    with pytest.raises(UserError) as exc:
        schema.check_semantics(schema.parse_input(inputs), max_duration=300)
    assert str(exc.value) == message


@pytest.mark.parametrize("model_version", ["stereo-large", "stereo-melody-large"])
def test_stereo_mbd_is_accepted_unlike_on_replicate(model_version):
    inp = schema.parse_input({"prompt": "x", "model_version": model_version, "multi_band_diffusion": True})
    schema.check_semantics(inp, 300)  # Replicate refuses; we decode left and right separately


def test_large_with_audio_and_continuation_is_allowed():
    inp = schema.parse_input({"model_version": "large", "input_audio": "a.wav", "continuation": True})
    schema.check_semantics(inp, 300)


def test_cli_pairs_are_typed_like_cog_predict():
    assert schema.parse_cli_pairs(
        ["prompt=a=b", "duration=3", "top_p=0.5", "continuation=true", "input_audio=@song.mp3", "seed=-1"]
    ) == {"prompt": "a=b", "duration": 3, "top_p": 0.5, "continuation": True, "input_audio": "song.mp3", "seed": -1}
    with pytest.raises(UserError, match="Unknown input 'bpm'"):
        schema.parse_cli_pairs(["bpm=120"])
    with pytest.raises(UserError, match="duration must be an integer, got 'long'"):
        schema.parse_cli_pairs(["duration=long"])
