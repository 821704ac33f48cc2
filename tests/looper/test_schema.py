"""The looper's schema is andreasjansson/musicgen-looper's, and `medium` stays out of meta/musicgen's."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from musicgen_local import registry, schema
from musicgen_local.errors import UserError
from musicgen_local.looper import schema as looper_schema

PUBLISHED = json.loads((Path(__file__).parents[1] / "data" / "musicgen-looper-input.json").read_text())


def _flat(props: dict) -> list[dict]:
    """The OpenAPI Input properties in the flat layout of tests/data, enums resolved."""
    doc = looper_schema.openapi_schema()["components"]["schemas"]
    out = []
    for name, prop in sorted(props.items(), key=lambda item: item[1]["x-order"]):
        item = {"name": name, "type": prop.get("type") or doc[name]["type"]}
        for key in ("default", "minimum", "maximum"):
            if key in prop:
                item[key] = prop[key]
        if "allOf" in prop:
            item["enum"] = doc[name]["enum"]
        item["description"] = prop["description"]
        out.append(item)
    return out


def test_input_schema_is_the_published_one():
    inp = looper_schema.openapi_schema()["components"]["schemas"]["Input"]
    assert _flat(inp["properties"]) == PUBLISHED["properties"]
    assert inp["required"] == PUBLISHED["required"]


def test_output_is_the_published_object_of_twenty_variations():
    out = looper_schema.openapi_schema()["components"]["schemas"]["Output"]
    assert out["type"] == "object"
    assert list(out["properties"]) == PUBLISHED["output_keys"]
    for key, prop in out["properties"].items():
        assert {k: prop[k] for k in ("type", "format")} == PUBLISHED["output_item"]
        assert prop["title"] == "Variation " + key[-2:]
    assert "required" not in out  # a run may deliver fewer loops than asked (see the re-roll policy)


@pytest.mark.parametrize(
    "data, field",
    [
        ({}, "prompt"),
        ({"prompt": "x", "bpm": 39.9}, "bpm"),
        ({"prompt": "x", "bpm": 301}, "bpm"),
        ({"prompt": "x", "variations": 21}, "variations"),
        ({"prompt": "x", "variations": 0}, "variations"),
        ({"prompt": "x", "max_duration": 1}, "max_duration"),
        ({"prompt": "x", "max_duration": 21}, "max_duration"),
        ({"prompt": "x", "model_version": "small"}, "model_version"),
        ({"prompt": "x", "model_version": "stereo-large"}, "model_version"),
        ({"prompt": "x", "output_format": "flac"}, "output_format"),
    ],
)
def test_out_of_range_inputs_are_refused_by_the_schema(data, field):
    with pytest.raises(ValidationError) as err:
        looper_schema.parse_input(data)
    assert err.value.errors()[0]["loc"] == (field,)


def test_defaults_and_a_fractional_tempo():
    inp = looper_schema.parse_input({"prompt": "x", "bpm": 60.23})
    assert (inp.bpm, inp.variations, inp.max_duration, inp.model_version, inp.seed) == (60.23, 4, 8, "medium", -1)


def test_semantic_checks_say_what_is_wrong():
    with pytest.raises(UserError, match="temperature"):
        looper_schema.check_semantics(looper_schema.parse_input({"prompt": "x", "temperature": 0}))


def test_medium_is_a_known_model_but_not_one_of_meta_musicgens_choices():
    assert registry.PRESETS["medium"].channels == 1 and not registry.PRESETS["medium"].melody
    assert "medium" in registry.FETCHABLE_VERSIONS
    published = ("stereo-melody-large", "stereo-large", "melody-large", "large", "encode-decode")
    assert schema.FIELDS_BY_NAME["model_version"].choices == published
    with pytest.raises(ValidationError):
        schema.parse_input({"prompt": "x", "model_version": "medium"})
    assert looper_schema.FIELDS_BY_NAME["model_version"].choices == ("medium", "large")
