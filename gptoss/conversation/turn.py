"""One assistant turn, independent of any HTTP API: the prompt to run, and the decoding of what the
model emits into reasoning, answer text and tool calls, as it streams.

Both the Chat Completions and the Responses endpoints build a :class:`TurnPrompt` from their request
shapes and read a :class:`TurnDecoder`'s deltas.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from gptoss.harmony import (
    Message,
    Role,
    StreamParser,
    render_conversation,
    render_conversation_for_completion,
)
from gptoss.harmony.parser import StreamState
from gptoss.tokenizer import Tokenizer


@dataclass
class TurnPrompt:
    """The conversation to complete; its first ``shared`` messages (system, developer) form a prefix
    that many requests share, whose KV cache the engine reuses."""

    messages: list[Message]
    shared: int = 0

    def tokens(self, tokenizer: Tokenizer) -> tuple[list[int], int]:
        """(prompt token ids ending in ``<|start|>assistant``, length of the shared prefix in tokens)."""
        ids = render_conversation_for_completion(self.messages, Role.ASSISTANT, tokenizer=tokenizer)
        prefix = 0
        if self.shared:
            head = render_conversation(self.messages[: self.shared], tokenizer=tokenizer)
            # Analysis-dropping rules only touch assistant messages, so the head renders the same alone;
            # check anyway and share nothing if not.
            prefix = len(head) if ids[: len(head)] == head else 0
        return ids, prefix


class GrowingText:
    """Text that grows by appends as a turn streams. ``s += piece`` on an attribute copies the whole string
    each time (quadratic over a long message); here each append costs its own length, and reading joins
    the pieces once (cached until the next append)."""

    __slots__ = ("_parts", "_joined", "_length")

    def __init__(self, text: str = ""):
        self._parts: list[str] = [text] if text else []
        self._joined: str | None = text
        self._length = len(text)

    def append(self, piece: str) -> None:
        if piece:
            self._parts.append(piece)
            self._joined = None
            self._length += len(piece)

    def __str__(self) -> str:
        if self._joined is None:
            self._joined = "".join(self._parts)
            self._parts = [self._joined]
        return self._joined

    def __len__(self) -> int:
        return self._length


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass
class Delta:
    """A piece of the turn as it streams.

    kind: ``reasoning`` (analysis text), ``content`` (answer text: final channel and commentary
    preambles), ``tool_call`` (a function call begins: ``name``, ``call_id``), ``tool_args`` (argument
    text of call ``index``), ``builtin_call`` (a call to a built-in tool begins: ``name`` = recipient),
    ``builtin_args``.
    """

    kind: str
    text: str = ""
    index: int = 0
    name: str | None = None
    call_id: str | None = None
    token: int | None = None


@dataclass
class ToolCall:
    index: int
    call_id: str
    name: str  # function name without the "functions." namespace, or a built-in recipient
    builtin: bool = False
    _arguments: GrowingText = field(default_factory=GrowingText, repr=False)

    @property
    def arguments(self) -> str:
        return str(self._arguments)


@dataclass
class TurnDecoder:
    """Feeds generated tokens to the forgiving Harmony parser and turns them into deltas."""

    tokenizer: Tokenizer
    parser: StreamParser = field(init=False)
    tool_calls: list[ToolCall] = field(default_factory=list)
    reasoning_tokens: int = 0
    _open: int = -1  # index into parser.messages of the message being streamed
    _kind: str = ""
    _reasoning: GrowingText = field(default_factory=GrowingText, repr=False)
    _content: GrowingText = field(default_factory=GrowingText, repr=False)

    def __post_init__(self) -> None:
        self.parser = StreamParser(self.tokenizer, role=Role.ASSISTANT)

    @property
    def reasoning(self) -> str:
        return str(self._reasoning)

    @property
    def content(self) -> str:
        return str(self._content)

    def feed(self, token: int) -> list[Delta]:
        p = self.parser
        p.process(token)
        out: list[Delta] = []
        if p.state is StreamState.CONTENT and self._open != len(p.messages):
            self._open = len(p.messages)
            out += self._begin(p.current_channel, p.current_recipient)
        if self._kind == "reasoning" and p.state is StreamState.CONTENT:
            self.reasoning_tokens += 1
        delta = p.last_content_delta
        if delta:
            out.append(self._text(delta, token))
        return out

    def finish(self) -> list[Delta]:
        """The stream ended: flush whatever the parser held back."""
        before = len(self.parser.messages)
        held = self.parser.current_content if self.parser.state is StreamState.CONTENT else ""
        self.parser.process_eos()
        out: list[Delta] = []
        if len(self.parser.messages) > before and self._open == before:
            text = self.parser.messages[-1].text
            if len(text) > len(held):
                out.append(self._text(text[len(held) :], None))
        return out

    @property
    def messages(self) -> list[Message]:
        return self.parser.messages

    @property
    def warnings(self) -> list[str]:
        return [str(w) for w in self.parser.warnings]

    def _begin(self, channel: str | None, recipient: str | None) -> list[Delta]:
        if recipient and recipient != "assistant":
            builtin = not recipient.startswith("functions.")
            name = recipient if builtin else recipient[len("functions.") :]
            call = ToolCall(len(self.tool_calls), new_call_id(), name, builtin=builtin)
            self.tool_calls.append(call)
            self._kind = "builtin_args" if builtin else "tool_args"
            return [
                Delta("builtin_call" if builtin else "tool_call", index=call.index, name=name, call_id=call.call_id)
            ]
        if channel == "analysis":
            if len(self._reasoning):
                self._reasoning.append("\n\n")
                self._kind = "reasoning"
                return [Delta("reasoning", "\n\n")]
            self._kind = "reasoning"
        else:
            self._kind = "content"
        return []

    def _text(self, text: str, token: int | None) -> Delta:
        if self._kind in ("tool_args", "builtin_args"):
            call = self.tool_calls[-1]
            call._arguments.append(text)
            return Delta(self._kind, text, index=call.index, token=token)
        if self._kind == "reasoning":
            self._reasoning.append(text)
        else:
            self._kind = "content"
            self._content.append(text)
        return Delta(self._kind, text, token=token)
