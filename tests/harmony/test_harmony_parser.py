"""The streaming parser on malformed model output: never raises, keeps every piece of text, warns."""

from __future__ import annotations

import json

import pytest

from gptoss.harmony import (
    Role,
    StreamParser,
    StreamState,
    parse_messages_from_completion_tokens,
)
from gptoss.tokenizer import Tokenizer


def T(tokenizer, text: str) -> list[int]:
    """Tokens of ``text`` with Harmony's special tokens written as ``<|...|>``."""
    return tokenizer.encoding.encode(text, allowed_special="all")


def run(tokenizer, text_or_tokens, role=Role.ASSISTANT) -> StreamParser:
    tokens = T(tokenizer, text_or_tokens) if isinstance(text_or_tokens, str) else text_or_tokens
    parser = StreamParser(tokenizer, role)
    for t in tokens:
        parser.process(t)
    return parser.process_eos()


def summary(parser: StreamParser):
    return [(m.role.value, m.author.name, m.channel, m.recipient, m.content_type, m.text) for m in parser.messages]


def kinds(parser: StreamParser) -> list[str]:
    return [w.kind for w in parser.warnings]


def test_well_formed_completion_has_no_warnings(tokenizer):
    p = run(
        tokenizer,
        "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>Hi!<|return|>",
    )
    assert summary(p) == [
        ("assistant", None, "analysis", None, None, "Think."),
        ("assistant", None, "final", None, None, "Hi!"),
    ]
    assert p.warnings == []
    assert p.state is StreamState.EXPECT_START


@pytest.mark.parametrize(
    "header",
    [
        "<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>",
        "<|start|>assistant<|channel|>commentary to=functions.get_weather json<|message|>",
    ],
)
def test_recipient_in_either_header_position(tokenizer, header):
    p = run(tokenizer, header + '{"city":"Paris"}<|call|>', role=None)
    assert summary(p) == [("assistant", None, "commentary", "functions.get_weather", "json", '{"city":"Paris"}')]
    assert p.warnings == []


@pytest.mark.parametrize(
    "header",
    [
        "<|start|>assistant to=functions.f<|channel|>commentary <|constrain|>json<|message|>",
        "<|start|>assistant<|channel|>commentary to=functions.f <|constrain|>json<|message|>",
        "<|start|>assistant<|channel|>commentary to=functions.f<|constrain|>json<|message|>",
    ],
)
def test_constrained_content_type(tokenizer, header):
    p = run(tokenizer, header + "{}<|call|>", role=None)
    assert summary(p) == [("assistant", None, "commentary", "functions.f", "<|constrain|>json", "{}")]


def test_unexpected_special_token_in_content_is_skipped_and_reported(tokenizer):
    p = run(tokenizer, "<|channel|>final<|message|>Hel<|reserved_200013|>lo<|endoftext|>!<|return|>")
    assert summary(p) == [("assistant", None, "final", None, None, "Hello!")]
    assert kinds(p) == ["unexpected_token", "unexpected_token"]
    assert "<|reserved_200013|>" in p.warnings[0].message


def test_unexpected_stop_token_between_messages(tokenizer):
    p = run(tokenizer, "<|channel|>final<|message|>A<|end|><|end|><|return|>")
    assert summary(p) == [("assistant", None, "final", None, None, "A")]
    assert kinds(p) == ["unexpected_token", "unexpected_token"]


def test_text_before_any_header(tokenizer):
    p = run(tokenizer, "stray words <|start|>assistant<|channel|>final<|message|>Hi<|end|>", role=None)
    assert summary(p) == [("assistant", None, "final", None, None, "Hi")]
    assert kinds(p) == ["text_outside_message"]
    assert p.warnings[0].text == "stray words "


def test_text_after_last_message(tokenizer):
    p = run(tokenizer, "<|channel|>final<|message|>Hi<|return|> trailing")
    assert summary(p)[0][-1] == "Hi"
    assert kinds(p) == ["text_outside_message"] and p.warnings[0].text == " trailing"


def test_header_missing_start_token(tokenizer):
    p = run(tokenizer, "<|channel|>final<|message|>A<|end|>assistant<|channel|>final<|message|>B<|end|>")
    assert summary(p) == [("assistant", None, "final", None, None, "A"), ("assistant", None, "final", None, None, "B")]
    assert kinds(p) == ["missing_start"]


def test_header_without_message_token(tokenizer):
    p = run(tokenizer, "<|channel|>final Hello there<|end|><|start|>assistant<|channel|>final<|message|>Ok<|return|>")
    assert summary(p) == [
        ("assistant", None, "final", None, None, "Hello there"),
        ("assistant", None, "final", None, None, "Ok"),
    ]
    assert kinds(p) == ["header_without_message"]


def test_header_cut_by_start(tokenizer):
    p = run(
        tokenizer,
        "<|start|>assistant<|channel|>analysis<|start|>assistant<|channel|>final<|message|>x<|end|>",
        role=None,
    )
    assert summary(p) == [
        ("assistant", None, "analysis", None, None, ""),
        ("assistant", None, "final", None, None, "x"),
    ]
    assert kinds(p) == ["header_without_message"]


def test_unknown_role(tokenizer):
    p = run(tokenizer, "<|start|>wizard<|message|>abracadabra<|end|>", role=None)
    assert summary(p) == [("tool", "wizard", None, None, None, "abracadabra")]
    assert kinds(p) == ["unknown_role"]


def test_tool_author_with_recipient_is_not_a_warning(tokenizer):
    p = run(
        tokenizer, "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{}<|end|>", role=None
    )
    assert summary(p) == [("tool", "functions.get_weather", "commentary", "assistant", None, "{}")]
    assert p.warnings == []


def test_named_author_round_trips(tokenizer):
    p = run(tokenizer, "<|start|>user:alice<|message|>hi<|end|>", role=None)
    assert summary(p) == [("user", "alice", None, None, None, "hi")]


def test_truncation_inside_content_keeps_partial_message(tokenizer):
    p = run(tokenizer, "<|channel|>analysis<|message|>Let me think about th")
    assert summary(p) == [("assistant", None, "analysis", None, None, "Let me think about th")]
    assert kinds(p) == ["truncated"]


def test_truncation_inside_header(tokenizer):
    p = run(tokenizer, "<|channel|>commentary to=functions.get_weather")
    assert summary(p) == [("assistant", None, "commentary", "functions.get_weather", None, "")]
    assert kinds(p) == ["truncated"]


def test_truncation_right_after_start(tokenizer):
    p = run(tokenizer, "<|channel|>final<|message|>Hi<|end|><|start|>")
    assert summary(p) == [("assistant", None, "final", None, None, "Hi")]
    assert kinds(p) == ["truncated"]


def test_empty_completion_is_not_an_error(tokenizer):
    p = run(tokenizer, [])
    assert p.messages == [] and p.warnings == []


def test_malformed_tool_call_json(tokenizer):
    p = run(tokenizer, '<|channel|>commentary to=functions.f <|constrain|>json<|message|>{"city": "Par<|call|>')
    assert summary(p) == [("assistant", None, "commentary", "functions.f", "<|constrain|>json", '{"city": "Par')]
    assert kinds(p) == ["invalid_json"]
    good = run(tokenizer, '<|channel|>commentary to=functions.f <|constrain|>json<|message|>{"city": "Paris"}<|call|>')
    assert good.warnings == [] and json.loads(good.messages[0].text) == {"city": "Paris"}


def test_missing_end_before_start(tokenizer):
    p = run(tokenizer, "<|channel|>analysis<|message|>A<|start|>assistant<|channel|>final<|message|>B<|return|>")
    assert summary(p) == [
        ("assistant", None, "analysis", None, None, "A"),
        ("assistant", None, "final", None, None, "B"),
    ]
    assert kinds(p) == ["missing_end"]


def test_channel_inside_content_starts_a_new_message(tokenizer):
    p = run(tokenizer, "<|channel|>analysis<|message|>A<|channel|>final<|message|>B<|return|>")
    assert summary(p) == [
        ("assistant", None, "analysis", None, None, "A"),
        ("assistant", None, "final", None, None, "B"),
    ]
    assert kinds(p) == ["missing_end"]


def test_message_token_without_header(tokenizer):
    p = run(tokenizer, "<|channel|>final<|message|>A<|end|><|message|>B<|end|>")
    assert summary(p) == [("assistant", None, "final", None, None, "A"), ("assistant", None, None, None, None, "B")]
    assert kinds(p) == ["unexpected_token"]


def test_leftover_header_words_are_reported(tokenizer):
    p = run(tokenizer, "<|start|>assistant to=functions.f extra words json<|message|>{}<|call|>", role=None)
    assert summary(p) == [("assistant", None, None, "functions.f", "json", "{}")]
    assert kinds(p) == ["header_leftover"]
    assert p.warnings[0].text == "extra words"


def test_invalid_token_ids(tokenizer):
    tokens = T(tokenizer, "<|channel|>final<|message|>A") + [-1, 10**9] + T(tokenizer, "B<|return|>")
    p = run(tokenizer, tokens)
    assert summary(p) == [("assistant", None, "final", None, None, "AB")]
    assert kinds(p) == ["invalid_token", "invalid_token"]


def test_utf8_split_across_tokens_never_yields_broken_text(tokenizer):
    text = "😀🎉 naïve 漢字 𝔘𝔫𝔦 ꙮ"
    content = tokenizer.encode(text)
    assert any(_invalid_alone(tokenizer.token_bytes(t)) for t in content)  # the premise of this test
    p = StreamParser(tokenizer, Role.ASSISTANT)
    deltas = []
    for t in T(tokenizer, "<|channel|>final<|message|>") + content:
        p.process(t)
        if p.last_content_delta is not None:
            deltas.append(p.last_content_delta)
        assert "\ufffd" not in p.current_content
    assert "".join(deltas) == text and all("\ufffd" not in d for d in deltas)
    p.process(Tokenizer.RETURN)
    assert p.messages[0].text == text


def _invalid_alone(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_invalid_utf8_becomes_replacement_character(tokenizer):
    lone_continuation = next(t for t in range(256) if tokenizer.token_bytes(t) == b"\x80")
    lead_byte = next(t for t in range(256) if tokenizer.token_bytes(t) == b"\xf0")
    tokens = T(tokenizer, "<|channel|>final<|message|>a") + [lone_continuation] + T(tokenizer, "b") + [lead_byte]
    p = run(tokenizer, tokens)
    assert p.messages[0].text == "a\ufffdb\ufffd"


def test_completion_parsing_starts_after_prompt_role(tokenizer):
    tokens = T(tokenizer, "<|channel|>final<|message|>Hi<|return|>")
    assert [
        m.to_dict() for m in parse_messages_from_completion_tokens(tokens, Role.ASSISTANT, tokenizer=tokenizer)
    ] == [{"role": "assistant", "name": None, "content": [{"type": "text", "text": "Hi"}], "channel": "final"}]
    p = StreamParser(tokenizer, "assistant")
    assert p.current_role is Role.ASSISTANT and p.state is StreamState.HEADER


def test_streaming_attributes(tokenizer):
    p = StreamParser(tokenizer, Role.ASSISTANT)
    for t in T(tokenizer, " to=functions.f<|channel|>commentary <|constrain|>json<|message|>"):
        p.process(t)
    assert (p.state, p.current_role, p.current_channel, p.current_recipient, p.current_content_type) == (
        StreamState.CONTENT,
        Role.ASSISTANT,
        "commentary",
        "functions.f",
        "<|constrain|>json",
    )
    p.process(tokenizer.encode("{}")[0])
    assert p.last_content_delta == "{}" and p.current_content == "{}"
    p.process(Tokenizer.CALL)
    assert p.last_content_delta is None and p.state is StreamState.EXPECT_START and p.current_role is None
    assert p.tokens[-1] == Tokenizer.CALL and len(p.messages) == 1


def test_parser_never_raises_on_garbage(tokenizer):
    specials = [
        Tokenizer.START,
        Tokenizer.END,
        Tokenizer.MESSAGE,
        Tokenizer.CHANNEL,
        Tokenizer.CONSTRAIN,
        Tokenizer.RETURN,
        Tokenizer.CALL,
        Tokenizer.ENDOFTEXT,
        Tokenizer.STARTOFTEXT,
        200018,
        201087,
    ]
    for role in (None, Role.ASSISTANT, Role.TOOL):
        for a in specials:
            for b in specials:
                run(tokenizer, [a, 1000, b, 1001, a], role=role)
