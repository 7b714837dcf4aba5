"""The Harmony turn grammar, checked token by token with llguidance."""

import pytest

from gptoss.engine.guided import GrammarConstraint, compile_lark
from gptoss.errors import GptossError
from gptoss.harmony.grammar import TurnGrammar

SCHEMA = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Tokyo"]}},
    "required": ["city"],
    "additionalProperties": False,
}


def accepts(tokenizer, grammar: TurnGrammar, text: str) -> bool:
    """Whether the grammar accepts ``text`` (special tokens written out) as a complete turn."""
    ids = []
    for piece in text.replace("<|", "\0<|").replace("|>", "|>\0").split("\0"):
        if piece.startswith("<|") and piece.endswith("|>"):
            ids.append(tokenizer.special_id(piece))
        elif piece:
            ids += tokenizer.encode(piece)
    m = GrammarConstraint(tokenizer, grammar.lark()).matcher
    return all(m.consume_token(t) for t in ids) and m.is_accepting()


CALL = '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}<|call|>'
FINAL = "<|channel|>final<|message|>Hello there<|return|>"
THINK = "<|channel|>analysis<|message|>Let me think.<|end|><|start|>assistant"


def test_auto_allows_reasoning_then_an_answer_or_a_call(tokenizer):
    g = TurnGrammar(functions={"get_weather": SCHEMA})
    for turn in (FINAL, CALL, THINK + FINAL, THINK + THINK + CALL):
        assert accepts(tokenizer, g, turn), turn


def test_headers_name_only_valid_channels_and_known_recipients(tokenizer):
    g = TurnGrammar(functions={"get_weather": SCHEMA})
    assert not accepts(tokenizer, g, "<|channel|>secret<|message|>x<|return|>")
    assert not accepts(tokenizer, g, CALL.replace("get_weather", "delete_files"))
    assert not accepts(tokenizer, g, "<|channel|>final<|message|>Hi<|call|>")  # an answer cannot end as a call


def test_arguments_follow_the_schema(tokenizer):
    g = TurnGrammar(functions={"get_weather": SCHEMA}, tool_choice="required")
    assert accepts(tokenizer, g, CALL)
    assert not accepts(tokenizer, g, CALL.replace('"Paris"', '"Berlin"'))
    assert not accepts(tokenizer, g, CALL.replace('{"city":"Paris"}', '{"city":"Paris","x":1}'))
    assert not accepts(tokenizer, g, FINAL)  # required: no answer without a call


def test_tool_choice_none_named_and_response_format(tokenizer):
    assert not accepts(tokenizer, TurnGrammar(functions={"get_weather": SCHEMA}, tool_choice="none"), CALL)
    named = TurnGrammar(functions={"get_weather": SCHEMA, "other": None}, tool_choice="other")
    assert not accepts(tokenizer, named, CALL)
    assert accepts(tokenizer, named, "<|channel|>commentary to=functions.other <|constrain|>json<|message|>{}<|call|>")
    fmt = TurnGrammar(final_schema={"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]})
    assert accepts(tokenizer, fmt, '<|channel|>final<|message|>{"ok":true}<|return|>')
    assert not accepts(tokenizer, fmt, FINAL)


def test_reasoning_budget_bounds_one_message(tokenizer):
    g = TurnGrammar(reasoning_max_tokens=4)
    assert accepts(tokenizer, g, THINK + FINAL)
    assert not accepts(tokenizer, g, THINK + THINK + FINAL)
    assert not accepts(
        tokenizer, g, "<|channel|>analysis<|message|>" + "word " * 20 + "<|end|><|start|>assistant" + FINAL
    )


def test_bad_grammar_inputs():
    with pytest.raises(ValueError, match="not among the tools"):
        TurnGrammar(functions={"a": None}, tool_choice="b").lark()
    with pytest.raises(ValueError, match="requires a tool call"):
        TurnGrammar(tool_choice="required").lark()
    with pytest.raises(GptossError, match="invalid grammar"):
        compile_lark('start: %json {"type": "bogus"}')


PREAMBLE = "<|channel|>commentary<|message|>Checking the weather.<|end|><|start|>assistant"


def test_no_preamble_when_a_response_format_holds_the_answer(tokenizer):
    """A response format constrains all the answer text a client reads, so it leaves no room for a preamble."""
    free = TurnGrammar(functions={"get_weather": SCHEMA})
    held = TurnGrammar(functions={"get_weather": SCHEMA}, final_schema=SCHEMA)
    assert accepts(tokenizer, free, PREAMBLE + CALL) and accepts(tokenizer, free, PREAMBLE + FINAL)
    assert not accepts(tokenizer, held, PREAMBLE + CALL)
    assert not accepts(tokenizer, held, PREAMBLE + '<|channel|>final<|message|>{"city":"Paris"}<|return|>')
    assert accepts(tokenizer, held, THINK + '<|channel|>final<|message|>{"city":"Paris"}<|return|>')
    assert accepts(tokenizer, held, THINK + CALL)


def test_loose_schemas_are_closed_and_numbers_bounded(tokenizer):
    loose = {
        "type": "object",
        "properties": {
            "n": {"type": "integer"},
            "x": {"type": "number"},
            "open": {
                "type": "object",
                "additionalProperties": True,
                "properties": {"a": {"type": "integer", "maximum": 10**30}},
            },
        },
    }
    g = TurnGrammar(functions={"f": loose}, tool_choice="required")

    def call(args: str) -> str:
        return f"<|channel|>commentary to=functions.f <|constrain|>json<|message|>{args}<|call|>"

    assert accepts(tokenizer, g, call('{"n":9223372036854774784,"x":-0.125,"open":{"a":1,"b":2}}'))
    assert not accepts(tokenizer, g, call('{"n":1,"extra":2}'))  # undeclared key: the schema did not allow more
    assert not accepts(tokenizer, g, call('{"n":9223372036854775808}'))  # past 64 bits
    assert not accepts(tokenizer, g, call('{"n":' + "9" * 400 + "}"))
    assert not accepts(tokenizer, g, call('{"x":' + "9" * 400 + "}"))
    assert not accepts(tokenizer, g, call('{"open":{"a":' + "9" * 25 + "}}"))  # a bound past 64 bits is narrowed
