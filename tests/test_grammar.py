"""The Harmony turn grammar, checked token by token with llguidance."""

import pytest

from gptoss.engine.guided import GrammarConstraint, compile_lark
from gptoss.errors import GptossError
from gptoss.harmony.grammar import TurnGrammar

SCHEMA = {"type": "object", "properties": {"city": {"enum": ["Paris", "Tokyo"]}}, "required": ["city"],
          "additionalProperties": False}


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
    assert not accepts(tokenizer, g, "<|channel|>analysis<|message|>" + "word " * 20 + "<|end|><|start|>assistant" + FINAL)


def test_bad_grammar_inputs():
    with pytest.raises(ValueError, match="not among the tools"):
        TurnGrammar(functions={"a": None}, tool_choice="b").lark()
    with pytest.raises(ValueError, match="requires a tool call"):
        TurnGrammar(tool_choice="required").lark()
    with pytest.raises(GptossError, match="invalid grammar"):
        compile_lark("start: %json {\"type\": \"bogus\"}")
