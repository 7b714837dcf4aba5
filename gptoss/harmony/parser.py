"""Parse sampled Harmony tokens back into messages, one token at a time.

Well-formed streams parse exactly as openai-harmony's ``StreamableParser`` parses them. Malformed
model output never raises: the parser keeps going, returns best-effort messages and records a
:class:`ParseWarning` for every repair. No text is dropped silently: each text token ends up in a
message (its header or its content) or in a warning's ``text``; ``spans`` and each warning's
``start``/``end`` say which tokens went where.
"""

from __future__ import annotations

import codecs
import json
import operator
import re
from dataclasses import dataclass
from enum import Enum
from typing import Iterable

from gptoss.harmony.messages import Author, Message, Role, TextContent
from gptoss.harmony.render import default_tokenizer
from gptoss.harmony.schema_ts import UNICODE_WHITESPACE
from gptoss.tokenizer import Tokenizer

CHANNEL_MARKER = "<|channel|>"
CONSTRAIN_MARKER = "<|constrain|>"
STOP_TOKENS = frozenset({Tokenizer.END, Tokenizer.RETURN, Tokenizer.CALL})
# Special tokens that may legitimately appear inside a header.
HEADER_SPECIALS = frozenset({Tokenizer.CHANNEL, Tokenizer.CONSTRAIN})
_ASCII_WS = re.compile(r"[ \t\n\x0c\r]+")  # Rust's split_ascii_whitespace


class StreamState(Enum):
    """Where the parser is: between messages, inside a header, or inside a message's content."""

    EXPECT_START = "ExpectStart"
    HEADER = "Header"
    CONTENT = "Content"


@dataclass(frozen=True)
class ParseWarning:
    """A repair the parser made. ``start``/``end``: the token indices concerned (``end`` exclusive);
    ``text``: text kept here because it went into no message."""

    kind: str
    message: str
    start: int
    end: int
    text: str = ""

    def __str__(self) -> str:
        extra = f" [text: {self.text!r}]" if self.text else ""
        return f"tokens {self.start}-{self.end}: {self.kind}: {self.message}{extra}"

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "message": self.message, "start": self.start, "end": self.end, "text": self.text}


@dataclass(frozen=True)
class MessageSpan:
    """The tokens of ``messages[i]``: header ``[start, content_start)``, content ``[content_start, end)``
    (``end`` is one past its stop token, when it had one)."""

    start: int
    content_start: int
    end: int


@dataclass(frozen=True)
class ParsedHeader:
    author: Author
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None


class StreamParser:
    """Incremental parser over completion tokens (openai-harmony's ``StreamableParser``, never raising).

    ``role``: the role the prompt's trailing ``<|start|>{role}`` announced (the first header then
    starts right after it); ``None`` when the tokens begin with ``<|start|>``.
    """

    def __init__(self, tokenizer: Tokenizer | None = None, role: "Role | str | None" = Role.ASSISTANT):
        self.tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
        self._initial_role = None if role is None else Role.parse(role)
        self.messages: list[Message] = []
        self.spans: list[MessageSpan] = []
        self.warnings: list[ParseWarning] = []
        self._tokens: list[int] = []
        self.last_content_delta: str | None = None
        # header state
        self._hint: Author | None = None if self._initial_role is None else Author(self._initial_role)
        self._header_tokens: list[int] = []
        self._header_start = 0
        self._header_explicit = False  # opened by a <|start|> token
        # content state
        self._header: ParsedHeader | None = None
        self._content_start = 0
        self._parts: list[str] = []
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        # text seen between messages
        self._stray: list[int] = []
        self._stray_start = 0
        self._state = StreamState.HEADER if self._initial_role is not None else StreamState.EXPECT_START

    # -- public state ----------------------------------------------------------------------
    @property
    def state(self) -> StreamState:
        return self._state

    @property
    def tokens(self) -> list[int]:
        """Every token fed so far."""
        return list(self._tokens)

    @property
    def current_role(self) -> Role | None:
        if self._state is StreamState.CONTENT and self._header is not None:
            return self._header.author.role
        if self._state is StreamState.HEADER and self._hint is not None:
            return self._hint.role
        return None

    @property
    def current_channel(self) -> str | None:
        return self._header.channel if self._state is StreamState.CONTENT and self._header else None

    @property
    def current_recipient(self) -> str | None:
        return self._header.recipient if self._state is StreamState.CONTENT and self._header else None

    @property
    def current_content_type(self) -> str | None:
        return self._header.content_type if self._state is StreamState.CONTENT and self._header else None

    @property
    def current_content(self) -> str:
        return "".join(self._parts) if self._state is StreamState.CONTENT else ""

    # -- feeding -----------------------------------------------------------------------------
    def process(self, token: int) -> "StreamParser":
        """Consume one token."""
        idx = len(self._tokens)
        self.last_content_delta = None
        try:
            token = operator.index(token)
        except TypeError:
            self._tokens.append(token)  # type: ignore[arg-type]
            self._warn("invalid_token", f"not a token id: {token!r}; ignored", idx, idx + 1)
            return self
        self._tokens.append(token)
        if not 0 <= token < self.tokenizer.vocab_size:
            self._warn("invalid_token", f"token id {token} is outside the vocabulary; ignored", idx, idx + 1)
            return self
        special = self.tokenizer.is_special(token)
        if self._state is StreamState.EXPECT_START:
            self._on_expect_start(token, idx, special)
        elif self._state is StreamState.HEADER:
            self._on_header(token, idx, special)
        else:
            self._on_content(token, idx, special)
        return self

    def process_many(self, tokens: Iterable[int]) -> "StreamParser":
        for t in tokens:
            self.process(t)
        return self

    def process_eos(self) -> "StreamParser":
        """The stream ended (a stop token was sampled, or generation was cut off)."""
        end = len(self._tokens)
        self.last_content_delta = None
        if self._state is StreamState.CONTENT:
            self._warn(
                "truncated",
                "stream ended inside a message without a stop token; kept the partial message",
                self._header_start,
                end,
            )
            self._finish_message(end)
        elif self._state is StreamState.HEADER:
            if self._header_tokens:
                self._close_header_without_message(end, "truncated", "stream ended inside a message header")
            elif self._header_explicit:
                self._warn("truncated", "stream ended right after <|start|>", self._header_start, end)
        else:
            self._flush_stray(end)
        self._state = StreamState.EXPECT_START
        self._hint = None
        return self

    # -- state handlers ------------------------------------------------------------------------
    def _on_expect_start(self, token: int, idx: int, special: bool) -> None:
        if token == Tokenizer.START:
            self._flush_stray(idx)
            self._begin_header(idx, None, explicit=True)
        elif token == Tokenizer.MESSAGE:
            if self._stray:
                self._warn("missing_start", "message header without <|start|>", self._stray_start, idx + 1)
                start, self._header_tokens, self._stray = self._stray_start, self._stray, []
                self._header_start = start
                self._header_explicit = False
                self._hint = None
                self._open_content(idx, lenient=False)
            else:
                author = self._fallback_author()
                self._warn(
                    "unexpected_token",
                    f"<|message|> outside any message; started a {author.role.value} message",
                    idx,
                    idx + 1,
                )
                self._header_start = idx
                self._start_content(ParsedHeader(author), idx + 1)
        elif not special or token in HEADER_SPECIALS:
            if not self._stray:
                self._stray_start = idx
            self._stray.append(token)
        elif token in STOP_TOKENS:
            self._flush_stray(idx)
            self._warn("unexpected_token", f"{self._name(token)} outside any message; ignored", idx, idx + 1)
        else:
            self._warn("unexpected_token", f"{self._name(token)} outside any message; ignored", idx, idx + 1)

    def _on_header(self, token: int, idx: int, special: bool) -> None:
        if token == Tokenizer.MESSAGE:
            self._open_content(idx, lenient=False)
        elif token == Tokenizer.START:
            if self._header_tokens:
                self._close_header_without_message(idx, "header_without_message", "<|start|> before <|message|>")
            else:
                self._warn("unexpected_token", "repeated <|start|>", idx, idx + 1)
            self._begin_header(idx, None, explicit=True)
        elif token in STOP_TOKENS:
            if self._header_tokens:
                self._close_header_without_message(
                    idx + 1, "header_without_message", f"{self._name(token)} before <|message|>"
                )
            else:
                self._warn("unexpected_token", f"{self._name(token)} right after <|start|>; ignored", idx, idx + 1)
            self._state = StreamState.EXPECT_START
            self._hint = None
        elif not special or token in HEADER_SPECIALS:
            self._header_tokens.append(token)
        else:
            self._warn("unexpected_token", f"{self._name(token)} inside a message header; ignored", idx, idx + 1)

    def _on_content(self, token: int, idx: int, special: bool) -> None:
        if not special:
            data = self.tokenizer.token_bytes(token)
            delta = self._decoder.decode(data)
            if delta:
                self._parts.append(delta)
                self.last_content_delta = delta
        elif token in STOP_TOKENS:
            self._finish_message(idx + 1)
        elif token == Tokenizer.START:
            self._warn("missing_end", "<|start|> inside a message: closed the message", idx, idx + 1)
            self._finish_message(idx)
            self._begin_header(idx, None, explicit=True)
        elif token == Tokenizer.CHANNEL:
            assert self._header is not None
            author = self._header.author
            self._warn(
                "missing_end",
                "<|channel|> inside a message: closed it and started a new message "
                f"from the same author ({author.name or author.role.value})",
                idx,
                idx + 1,
            )
            self._finish_message(idx)
            self._begin_header(idx, author, explicit=False)
            self._header_tokens.append(token)
        else:
            self._warn("unexpected_token", f"{self._name(token)} inside message content; ignored", idx, idx + 1)

    # -- transitions -----------------------------------------------------------------------------
    def _begin_header(self, idx: int, hint: Author | None, explicit: bool) -> None:
        self._state = StreamState.HEADER
        self._hint = hint
        self._header_tokens = []
        self._header_start = idx
        self._header_explicit = explicit

    def _open_content(self, idx: int, lenient: bool) -> None:
        header, leftover = self._parse_header(lenient)
        if leftover:
            self._warn(
                "header_leftover",
                "unexpected text in the message header; left out of the header",
                self._header_start,
                idx + 1,
                leftover,
            )
        self._start_content(header, idx + 1)

    def _start_content(self, header: ParsedHeader, content_start: int) -> None:
        self._state = StreamState.CONTENT
        self._header = header
        self._content_start = content_start
        self._parts = []
        self._decoder.reset()
        self._hint = None

    def _finish_message(self, end: int) -> None:
        assert self._header is not None
        tail = self._decoder.decode(b"", final=True)
        text = "".join(self._parts) + tail
        h = self._header
        msg = Message(
            author=h.author,
            content=[TextContent(text)],
            channel=h.channel,
            recipient=h.recipient,
            content_type=h.content_type,
        )
        self.messages.append(msg)
        self.spans.append(MessageSpan(self._header_start, self._content_start, end))
        if h.content_type is not None and "json" in h.content_type.lower():
            try:
                json.loads(text)
            except ValueError as exc:
                self._warn(
                    "invalid_json",
                    f"content of a {h.content_type} message is not valid JSON ({exc})",
                    self._content_start,
                    end,
                )
        self._state = StreamState.EXPECT_START
        self._header = None
        self._parts = []
        self._decoder.reset()

    def _close_header_without_message(self, end: int, kind: str, why: str) -> None:
        """A header that never reached ``<|message|>``: keep what it says, its stray words become content."""
        header, leftover = self._parse_header(lenient=True)
        self._warn(kind, f"{why}: kept as a message whose header may be incomplete", self._header_start, end)
        self.messages.append(
            Message(
                author=header.author,
                content=[TextContent(leftover)],
                channel=header.channel,
                recipient=header.recipient,
                content_type=header.content_type,
            )
        )
        self.spans.append(MessageSpan(self._header_start, end, end))
        self._header_tokens = []
        self._hint = None
        self._state = StreamState.EXPECT_START

    def _flush_stray(self, end: int) -> None:
        if self._stray:
            text = self.tokenizer.decode(self._stray)
            self._warn("text_outside_message", "text outside any message", self._stray_start, end, text)
            self._stray = []

    # -- header parsing ----------------------------------------------------------------------------
    def _fallback_author(self) -> Author:
        if self.messages:
            return self.messages[-1].author
        return Author(self._initial_role or Role.ASSISTANT)

    def _parse_header(self, lenient: bool) -> tuple[ParsedHeader, str]:
        """Parse the collected header tokens; returns the header and any text that is not header metadata.

        Mirrors openai-harmony: the channel follows ``<|channel|>``; the remaining words are
        ``[role] [to=]recipient [content_type]``. ``lenient`` (header cut short): words that are
        neither ``to=...`` nor ``<|constrain|>...`` are returned as content, not as metadata.
        """
        start, end = self._header_start, self._header_start + len(self._header_tokens) + 1
        s = self.tokenizer.decode(self._header_tokens)
        channel: str | None = None
        i = s.find(CHANNEL_MARKER)
        if i >= 0:
            after = s[i + len(CHANNEL_MARKER) :]
            j = next((k for k, ch in enumerate(after) if ch in UNICODE_WHITESPACE or ch == "<"), len(after))
            if j == 0:
                self._warn("empty_channel", "<|channel|> without a channel name", start, end)
            else:
                channel = after[:j]
            s = s[:i] + after[j:]
        s = s.strip(UNICODE_WHITESPACE)
        if CONSTRAIN_MARKER in s:
            s = s.replace(CONSTRAIN_MARKER, " " + CONSTRAIN_MARKER).strip(UNICODE_WHITESPACE)
        parts = [p for p in _ASCII_WS.split(s) if p]

        author = self._header_author(parts, start, end)
        if parts and parts[0] == author.role.value:
            parts.pop(0)

        recipient: str | None = None
        content_type: str | None = None
        if lenient:
            rest = []
            for p in parts:
                if recipient is None and p.startswith("to="):
                    recipient = p[3:]
                elif content_type is None and p.startswith(CONSTRAIN_MARKER):
                    content_type = p
                else:
                    rest.append(p)
            leftover = " ".join(rest)
        else:
            if parts:
                n = len(parts)
                last = parts.pop()
                if last.startswith("to="):
                    recipient = last[3:]
                elif n == 1 and last.startswith(CONSTRAIN_MARKER):
                    content_type = last
                elif n == 1:
                    recipient = last
                else:
                    content_type = last
                    # openai-harmony takes the word before the content type; when stray words sit in
                    # between (a header it rejects), prefer the nearest ``to=`` word.
                    to_idx = next((k for k in reversed(range(len(parts))) if parts[k].startswith("to=")), None)
                    raw = parts.pop() if to_idx is None else parts.pop(to_idx)
                    recipient = raw[3:] if raw.startswith("to=") else raw
            leftover = " ".join(parts)
        return ParsedHeader(author, channel, recipient, content_type), leftover

    def _header_author(self, parts: list[str], start: int, end: int) -> Author:
        if self._hint is not None:
            return self._hint
        if not parts or parts[0].startswith("to="):
            author = self._fallback_author()
            self._warn(
                "missing_role", f"message header names no role; assumed {author.name or author.role.value}", start, end
            )
            return author
        first = parts[0]
        role = Role.lookup(first)
        if role is not None:
            return Author(role)
        prefix, colon, name = first.partition(":")
        if colon and Role.lookup(prefix) is not None and name:
            parts.pop(0)
            return Author(Role.parse(prefix), name)
        parts.pop(0)
        if not parts:
            self._warn("unknown_role", f"unknown role {first!r}; read as a tool message from {first!r}", start, end)
        return Author(Role.TOOL, first)

    # -- helpers -------------------------------------------------------------------------------------
    def _warn(self, kind: str, message: str, start: int, end: int, text: str = "") -> None:
        self.warnings.append(ParseWarning(kind, message, start, end, text))

    def _name(self, token: int) -> str:
        try:
            return self.tokenizer.token_bytes(token).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - never raise on model output
            return f"token {token}"


def parse_messages_from_completion_tokens(
    tokens: Iterable[int],
    role: "Role | str | None" = None,
    *,
    tokenizer: Tokenizer | None = None,
) -> list[Message]:
    """Parse a whole completion (see :class:`StreamParser`); warnings are dropped, use the parser to keep them."""
    parser = StreamParser(tokenizer, role)
    parser.process_many(tokens)
    parser.process_eos()
    return parser.messages
