"""JSON Schema -> TypeScript rendering of function tools: named cases, each checked against openai-harmony,
plus literal expectations for the common shapes (so a failure reads as a diff of text)."""

from __future__ import annotations

import pytest

import gptoss.harmony as h
from gptoss.harmony import DeveloperContent, Message, Role, ToolDescription
from gptoss.harmony.schema_ts import json_display, rust_lines

CASES = {
    "no_params": None,
    "empty_schema": {},
    "flat": {
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "City, e.g. Paris"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
            "days": {"type": "integer", "default": 3},
        },
        "required": ["location"],
    },
    "nested_objects": {
        "type": "object",
        "properties": {
            "filter": {
                "type": "object",
                "description": "What to keep",
                "properties": {
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "deep": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]},
                },
                "required": ["tags"],
            }
        },
    },
    "arrays": {
        "type": "object",
        "properties": {
            "ids": {"type": "array", "items": {"type": "integer"}},
            "matrix": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            "anything": {"type": "array"},
            "null_items": {"type": "array", "items": None},
            "objects": {"type": "array", "items": {"type": "object", "properties": {"a": {"type": "boolean"}}}},
        },
    },
    "property_one_of": {
        "type": "object",
        "properties": {
            "target": {
                "description": "Where to send it",
                "default": "inbox",
                "oneOf": [
                    {"type": "string", "description": "Where to send it"},
                    {"type": "integer", "description": "A folder id", "default": 0},
                    {"type": "object", "properties": {"path": {"type": "string"}}, "nullable": True},
                ],
            },
            "mode": {
                "description": "Mode",
                "oneOf": [
                    {"type": "string", "enum": ["a", "b"], "default": "a", "description": "letters"},
                    {"type": "boolean", "description": "Mode"},
                ],
            },
            "enum_default": {"type": "string", "enum": ["x"], "default": "x", "oneOf": [{"type": "string"}]},
        },
        "required": ["target"],
    },
    "top_level_one_of": {
        "oneOf": [
            {"type": "object", "properties": {"a": {"type": "string"}}, "description": "first"},
            {"type": "string", "enum": ["on", "off"], "default": "on", "description": "switch"},
            {"type": "number", "nullable": True, "default": 1.5},
        ]
    },
    "any_of_and_type_lists": {
        "type": "object",
        "properties": {
            "u": {"anyOf": [{"type": "string"}, {"type": "number"}]},
            "t": {"type": ["string", "integer", "null"]},
            "bad_list": {"type": [1, 2]},
            "n": {"type": "null"},
            "enum_only": {"enum": ["a", "b"]},
            "mixed_enum": {"type": "string", "enum": [1, 2]},
        },
    },
    "nullable_and_defaults": {
        "type": "object",
        "properties": {
            "a": {"type": "string", "nullable": True, "default": 'say "hi"\n'},
            "b": {"type": ["string", "null"], "nullable": True},
            "c": {"type": "number", "default": 1e-6},
            "d": {"type": "number", "default": 1e20},
            "e": {"type": "number", "default": 2**64},
            "f": {"default": None},
            "g": {"type": "object", "properties": {}, "default": {"k": ["ü", 1.0, None, True]}},
            "h": {"type": "number", "default": 0.1},
            "i": {"type": "integer", "default": -(2**63)},
            "j": {"type": "number", "default": 123456789012345678.0},
        },
    },
    "titles_examples": {
        "type": "object",
        "properties": {
            "q": {"type": "string", "title": "Query", "description": "Search text", "examples": ["cats", 3, "dogs"]},
            "r": {"type": "string", "examples": []},
        },
    },
    "multiline_descriptions": {
        "type": "object",
        "description": "line one\nline two",
        "properties": {"x": {"type": "string", "description": "a\r\nb"}},
    },
}


def _developer(params, description="Does a thing.\r\nSecond line.\n"):
    dev = DeveloperContent.new().with_function_tools([ToolDescription.new("do_it", description, params)])
    return Message.from_role_and_content(Role.DEVELOPER, dev)


@pytest.mark.parametrize("name", sorted(CASES))
def test_schema_renders_like_oracle(name, oracle, tokenizer):
    from _harmony_gen import to_oracle_message

    msg = _developer(CASES[name])
    assert h.render(msg, tokenizer=tokenizer) == oracle.render(to_oracle_message(msg))


def test_flat_schema_text():
    text = h.developer_content_text(_developer(CASES["flat"], "Get the weather.").content[0])
    assert text == (
        "# Tools\n\n## functions\n\nnamespace functions {\n\n// Get the weather.\n"
        "type do_it = (_: {\n"
        "// City, e.g. Paris\n"
        "location: string,\n"
        'unit?: "celsius" | "fahrenheit", // default: celsius\n'
        "days?: number, // default: 3\n"
        "}) => any;\n\n} // namespace functions"
    )


def test_no_params_text():
    text = h.developer_content_text(_developer(None, "Ping.").content[0])
    assert "// Ping.\ntype do_it = () => any;\n" in text


def test_top_level_union_quotes_enum_default():
    ts = h.json_schema_to_typescript(CASES["top_level_one_of"])
    assert '"on" | "off" // switch default: "on"' in ts
    assert "number | null // default: 1.5" in ts


def test_json_display_matches_serde_json():
    assert json_display({"a": [1, 1.0, None, True, 'x"\n\u0001ü/']}) == '{"a":[1,1.0,null,true,"x\\"\\n\\u0001ü/"]}'
    assert [json_display(v) for v in (1e-6, 1e-5, 1e20, 1e16, 1e15, 2**64, 0.1, -0.0)] == [
        "1e-6",
        "0.00001",
        "1e20",
        "1e16",
        "1000000000000000.0",
        "1.8446744073709552e19",
        "0.1",
        "-0.0",
    ]


def test_rust_lines():
    assert rust_lines("") == []
    assert rust_lines("a\n") == ["a"]
    assert rust_lines("a\r\n\nb") == ["a", "", "b"]
    assert rust_lines("a\x0bb\u2028c") == ["a\x0bb\u2028c"]
