"""Conformance with openai-harmony (the oracle): rendering token for token, parsing message for message,
streaming state token by token, and the JSON interchange shape, over seeded random conversations."""

from __future__ import annotations

import json
import random

import pytest
from _harmony_gen import oracle_parses_alike, random_conversation, to_oracle_conversation, to_oracle_message

import gptoss.harmony as h
from gptoss.harmony import Conversation, Message, Role
from gptoss.tokenizer import Tokenizer

N_CONVERSATIONS = 240


def _plain(obj):
    return json.loads(json.dumps(obj))


def _oracle_dicts(messages):
    return [_plain(m.to_dict()) for m in messages]


def _our_dicts(messages):
    return [_plain(m.to_dict()) for m in messages]


def _completion_tokens(messages: list[Message], tokenizer) -> list[int]:
    """The tokens a model would sample after a prompt ending in ``<|start|>assistant``."""
    tokens: list[int] = []
    for m in messages:
        tokens += h.render(m, tokenizer=tokenizer)
    assert tokens[:2] == [Tokenizer.START, tokenizer.encode("assistant")[0]]
    if messages[-1].role is Role.ASSISTANT and messages[-1].channel == "final":
        tokens[-1] = Tokenizer.RETURN
    return tokens[2:]


def _last_turn_assistant_messages(conv: Conversation) -> list[Message]:
    msgs = conv.messages
    last_user = max((i for i, m in enumerate(msgs) if m.role is Role.USER), default=-1)
    tail = msgs[last_user + 1 :]
    while tail and tail[0].role is not Role.ASSISTANT:
        tail = tail[1:]
    return tail


def _compare_streaming(oracle, tokenizer, tokens: list[int], role) -> None:
    import openai_harmony as oh

    theirs = oh.StreamableParser(oracle, None if role is None else oh.Role(role.value))
    ours = h.StreamParser(tokenizer, role)
    for i, t in enumerate(tokens):
        theirs.process(t)
        ours.process(t)
        where = f"token {i} ({t})"
        assert ours.state.value == theirs.state.value, where
        assert (ours.current_role.value if ours.current_role else None) == (
            theirs.current_role.value if theirs.current_role else None
        ), where
        assert ours.current_channel == theirs.current_channel, where
        assert ours.current_recipient == theirs.current_recipient, where
        assert ours.current_content_type == theirs.current_content_type, where
        assert ours.last_content_delta == theirs.last_content_delta, where
        assert ours.current_content == theirs.current_content, where
    theirs.process_eos()
    ours.process_eos()
    assert _our_dicts(ours.messages) == _oracle_dicts(theirs.messages)
    assert ours.tokens == list(theirs.tokens)
    assert [w for w in ours.warnings if w.kind != "truncated"] == []


@pytest.mark.parametrize("seed", range(N_CONVERSATIONS))
def test_random_conversation_matches_oracle(seed, oracle, tokenizer):
    import openai_harmony as oh

    rng = random.Random(seed)
    gen = random_conversation(rng)
    conv = gen.conversation
    theirs = to_oracle_conversation(conv)

    # JSON interchange: same document, and it reads back to the same conversation.
    assert conv.to_json() == theirs.to_json()
    assert Conversation.from_json(conv.to_json()) == conv
    assert _our_dicts(conv.messages) == _oracle_dicts(theirs.messages)

    # Rendering, every way.
    next_role = rng.choice([Role.ASSISTANT, Role.ASSISTANT, Role.USER, Role.TOOL])
    assert h.render_conversation_for_completion(
        conv, next_role, tokenizer=tokenizer
    ) == oracle.render_conversation_for_completion(theirs, oh.Role(next_role.value))
    assert h.render_conversation_for_training(conv, tokenizer=tokenizer) == oracle.render_conversation_for_training(
        theirs
    )
    assert h.render_conversation(conv, tokenizer=tokenizer) == oracle.render_conversation(theirs)
    keep = h.RenderConfig(auto_drop_analysis=False)
    keep_oh = oh.RenderConversationConfig(auto_drop_analysis=False)
    assert h.render_conversation_for_training(
        conv, keep, tokenizer=tokenizer
    ) == oracle.render_conversation_for_training(theirs, keep_oh)
    assert h.render_conversation_for_completion(
        conv, "assistant", keep, tokenizer=tokenizer
    ) == oracle.render_conversation_for_completion(theirs, oh.Role.ASSISTANT, keep_oh)
    has_functions = h.conversation_has_function_tools(conv)
    for m in conv.messages:
        assert h.render(m, conversation_has_function_tools=has_functions, tokenizer=tokenizer) == oracle.render(
            to_oracle_message(m), oh.RenderOptions(conversation_has_function_tools=has_functions)
        )

    # Parsing: the last turn's assistant messages as a completion, streamed token by token.
    tail = [m for m in _last_turn_assistant_messages(conv) if oracle_parses_alike(m)]
    if tail and tail[0].role is Role.ASSISTANT:
        tokens = _completion_tokens(tail, tokenizer)
        expected = _oracle_dicts(oracle.parse_messages_from_completion_tokens(tokens, oh.Role.ASSISTANT))
        assert (
            _our_dicts(h.parse_messages_from_completion_tokens(tokens, Role.ASSISTANT, tokenizer=tokenizer)) == expected
        )
        _compare_streaming(oracle, tokenizer, tokens, Role.ASSISTANT)

    # Parsing the whole rendered conversation, roles read from the headers.
    tokens = h.render_conversation([m for m in conv.messages if oracle_parses_alike(m)], keep, tokenizer=tokenizer)
    expected = _oracle_dicts(oracle.parse_messages_from_completion_tokens(tokens, None))
    parser = h.StreamParser(tokenizer, None).process_many(tokens).process_eos()
    assert _our_dicts(parser.messages) == expected
    assert parser.warnings == []
    _compare_streaming(oracle, tokenizer, tokens, None)


def test_generator_covers_every_feature(tokenizer):
    """The seeded conversations above really exercise each feature the conformance test claims."""
    seen: set[str] = set()
    for seed in range(N_CONVERSATIONS):
        conv = random_conversation(random.Random(seed)).conversation
        for m in conv.messages:
            for c in m.content:
                if isinstance(c, h.SystemContent):
                    seen.add("system")
                    if c.tools and "browser" in c.tools:
                        seen.add("browser")
                    if c.tools and "python" in c.tools:
                        seen.add("python")
                    if c.conversation_start_date:
                        seen.add("date")
                    if c.reasoning_effort:
                        seen.add(f"effort:{c.reasoning_effort.value}")
                if isinstance(c, h.DeveloperContent):
                    if c.instructions:
                        seen.add("instructions")
                    if c.has_function_tools():
                        seen.add("functions")
                        text = h.developer_content_text(c)
                        for marker, name in [
                            ("oneOf", " | "),
                            ("[]", "array"),
                            ("?:", "optional"),
                            ("// default:", "default"),
                            ("() => any", "no-params"),
                            ("| null", "nullable"),
                            ('"', "enum"),
                        ]:
                            if marker in text:
                                seen.add(f"schema:{name}")
            if m.role is Role.TOOL:
                seen.add("tool-result")
            if m.recipient and m.role is Role.ASSISTANT:
                seen.add(f"call:{m.recipient.split('.')[0]}")
            if m.content_type:
                seen.add(f"ctype:{m.content_type}")
            if m.channel:
                seen.add(f"channel:{m.channel}")
        finals = [i for i, m in enumerate(conv.messages) if m.channel == "final"]
        if finals and any(m.channel == "analysis" for m in conv.messages[finals[0] :]):
            seen.add("analysis-after-final")
        if any(m.channel == "analysis" for m in conv.messages[: finals[0] if finals else 0]):
            seen.add("analysis-before-final")
    expected = {
        "system",
        "browser",
        "python",
        "date",
        "effort:Low",
        "effort:Medium",
        "effort:High",
        "instructions",
        "functions",
        "schema:array",
        "schema:optional",
        "schema:default",
        "schema:no-params",
        "schema:nullable",
        "schema:enum",
        "tool-result",
        "call:functions",
        "call:browser",
        "call:python",
        "ctype:<|constrain|>json",
        "ctype:json",
        "channel:analysis",
        "channel:commentary",
        "channel:final",
        "analysis-after-final",
        "analysis-before-final",
    }
    assert expected <= seen, expected - seen


def test_stop_tokens_match_oracle(oracle):
    assert sorted(h.stop_tokens()) == sorted(oracle.stop_tokens())
    assert sorted(h.stop_tokens_for_assistant_actions()) == sorted(oracle.stop_tokens_for_assistant_actions())
    assert set(h.stop_tokens()) == {Tokenizer.RETURN, Tokenizer.CALL, Tokenizer.END}
    assert set(h.stop_tokens_for_assistant_actions()) == {Tokenizer.RETURN, Tokenizer.CALL}


def test_invalid_utf8_content_matches_oracle(oracle, tokenizer):
    """Content made of stray bytes of multi-byte characters: the same text (with U+FFFD) as openai-harmony,
    with or without a stop token. (Only the timing of deltas differs: openai-harmony holds back valid text
    that follows an invalid byte until the next token; we emit it at once.)"""
    import openai_harmony as oh

    byte_tokens = [t for t in range(256) if tokenizer.token_bytes(t)[0] >= 0x80]
    words = [tokenizer.encode(w) for w in ["a", "😀 x", "漢字", "ü", "𝔘"]]
    head = tokenizer.encoding.encode("<|channel|>final<|message|>", allowed_special="all")
    rng = random.Random(7)
    for _ in range(2000):
        body = []
        for _ in range(rng.randint(0, 12)):
            body += [rng.choice(byte_tokens)] if rng.random() < 0.7 else rng.choice(words)
        tokens = head + body + ([Tokenizer.RETURN] if rng.random() < 0.5 else [])
        expected = _oracle_dicts(oracle.parse_messages_from_completion_tokens(tokens, oh.Role.ASSISTANT))
        assert (
            _our_dicts(h.parse_messages_from_completion_tokens(tokens, Role.ASSISTANT, tokenizer=tokenizer)) == expected
        )
