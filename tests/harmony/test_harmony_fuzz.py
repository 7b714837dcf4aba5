"""Fuzzing the streaming parser: 10,000 seeded random token streams (special tokens mixed with text,
well-formed messages cut and mutated, truncations). For each: no exception, the same result when run
again, and every text token accounted for in a message (header or content) or in a warning."""

from __future__ import annotations

import random

from _harmony_gen import WORDS, random_conversation

import gptoss.harmony as h
from gptoss.harmony import Role, StreamParser
from gptoss.tokenizer import Tokenizer

N_STREAMS = 10_000
SPECIALS = [
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
    200013,
    201087,
]
HEADER_BITS = [
    "<|start|>assistant",
    "<|start|>",
    "assistant",
    "user",
    "tool",
    "system",
    "<|channel|>analysis",
    "<|channel|>final",
    "<|channel|>commentary",
    "<|channel|>",
    " to=functions.get_weather",
    "to=python",
    " <|constrain|>json",
    " json",
    "<|message|>",
    "functions.lookup to=assistant",
    "wizard",
    "user:bob",
    " to=",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    '{"a": 1',
    "}",
]


class Pools:
    def __init__(self, tokenizer: Tokenizer, rng: random.Random):
        enc = tokenizer.encoding
        self.header_bits = [enc.encode(b, allowed_special="all") for b in HEADER_BITS]
        self.words = [tokenizer.encode(w) for w in WORDS] + [tokenizer.encode(" " + w) for w in WORDS]
        # tokens that are single bytes of multi-byte characters (broken UTF-8 when alone)
        self.byte_tokens = [t for t in range(256) if tokenizer.token_bytes(t)[0] >= 0x80]
        self.conversations = []
        for seed in range(40):
            conv = random_conversation(random.Random(10_000 + seed)).conversation
            self.conversations.append(h.render_conversation(conv, tokenizer=tokenizer))


def random_stream(rng: random.Random, pools: Pools) -> list[int]:
    r = rng.random()
    if r < 0.35:  # a real conversation, cut and mutated
        base = list(rng.choice(pools.conversations))
        if rng.random() < 0.5:
            start = rng.randrange(len(base))
            base = base[start : start + rng.randint(1, 80)]
        for _ in range(rng.randint(0, 4)):
            op = rng.random()
            pos = rng.randrange(len(base) + 1)
            if op < 0.3 and base:
                del base[min(pos, len(base) - 1)]
            elif op < 0.7:
                base.insert(pos, rng.choice(SPECIALS))
            else:
                base[pos:pos] = rng.choice(pools.words)
        return base
    out: list[int] = []
    for _ in range(rng.randint(0, 30)):
        p = rng.random()
        if p < 0.25:
            out.append(rng.choice(SPECIALS))
        elif p < 0.55:
            out += rng.choice(pools.header_bits)
        elif p < 0.85:
            out += rng.choice(pools.words)
        elif p < 0.93:
            out.append(rng.choice(pools.byte_tokens))
        elif p < 0.99:
            out.append(rng.randrange(199_998))
        else:
            out.append(rng.choice([-1, 201_088, 10**9]))
    return out


def parse(tokenizer, tokens, role, track_deltas=False):
    parser = StreamParser(tokenizer, role)
    deltas: list[str] = []
    for t in tokens:
        before = len(parser.messages)
        parser.process(t)
        if track_deltas:
            for m, span in zip(parser.messages[before:], parser.spans[before:]):
                if span.content_start < span.end:
                    _check_deltas(m.text, deltas)
            if len(parser.messages) > before:
                deltas = []
            if parser.last_content_delta is not None:
                deltas.append(parser.last_content_delta)
    before = len(parser.messages)
    parser.process_eos()
    if track_deltas:
        for m, span in zip(parser.messages[before:], parser.spans[before:]):
            if span.content_start < span.end:
                _check_deltas(m.text, deltas)
    return parser


def _check_deltas(text: str, deltas: list[str]) -> None:
    """Streamed deltas are a prefix of the message text; only replacement characters may follow."""
    streamed = "".join(deltas)
    assert text.startswith(streamed), (text, streamed)
    assert set(text[len(streamed) :]) <= {"\ufffd"}


def result(parser: StreamParser):
    return ([m.to_dict() for m in parser.messages], parser.warnings, parser.spans, parser.state, parser.tokens)


def check_accounting(tokenizer: Tokenizer, tokens: list[int], parser: StreamParser) -> None:
    def is_text(t) -> bool:
        return isinstance(t, int) and 0 <= t < tokenizer.vocab_size and not tokenizer.is_special(t)

    covered = [False] * len(tokens)
    for span in parser.spans:
        for i in range(span.start, span.end):
            covered[i] = True
    for w in parser.warnings:
        for i in range(w.start, min(w.end, len(tokens))):
            covered[i] = True
    for i, t in enumerate(tokens):
        if is_text(t):
            assert covered[i], f"text token {i} ({t}) is in no message and no warning"
    assert len(parser.spans) == len(parser.messages)
    for msg, span in zip(parser.messages, parser.spans):
        if span.content_start < span.end:  # the message had a content part: no text lost or added
            ids = [t for t in tokens[span.content_start : span.end] if is_text(t)]
            assert msg.text == tokenizer.decode_bytes(ids).decode("utf-8", "replace")
    for w in parser.warnings:
        if w.kind == "text_outside_message":
            ids = [t for t in tokens[w.start : w.end] if is_text(t) or t in (Tokenizer.CHANNEL, Tokenizer.CONSTRAIN)]
            assert w.text == tokenizer.decode(ids) and w.text


def test_fuzz_streaming_parser(tokenizer):
    rng = random.Random(1234)
    pools = Pools(tokenizer, rng)
    roles = [None, Role.ASSISTANT, Role.ASSISTANT, Role.USER, Role.TOOL]
    kinds_seen: set[str] = set()
    for i in range(N_STREAMS):
        tokens = random_stream(rng, pools)
        role = rng.choice(roles)
        first = parse(tokenizer, tokens, role, track_deltas=True)
        again = parse(tokenizer, tokens, role)
        assert result(first) == result(again), f"stream {i} parsed differently on a rerun"
        check_accounting(tokenizer, tokens, first)
        kinds_seen.update(w.kind for w in first.warnings)
    # the streams really reach every repair path
    assert kinds_seen >= {
        "unexpected_token",
        "text_outside_message",
        "missing_start",
        "header_without_message",
        "unknown_role",
        "truncated",
        "invalid_json",
        "missing_end",
        "header_leftover",
        "invalid_token",
        "missing_role",
        "empty_channel",
    }, kinds_seen
