"""Render messages and conversations to o200k_harmony token ids, exactly as openai-harmony does.

Header layout: ``<|start|>{role}[:{name}][ to={recipient}][<|channel|>{channel}][ {content_type}]<|message|>``;
a tool message's header starts with its author name instead of ``tool``. Text is always encoded as
ordinary text, so ``<|end|>`` typed by a user stays plain text.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Iterable

from gptoss.harmony.errors import HarmonyError
from gptoss.harmony.messages import Conversation, Message, Role, TextContent
from gptoss.harmony.schema_ts import render_tools_section
from gptoss.harmony.system import DeveloperContent, SystemContent
from gptoss.tokenizer import Tokenizer

CONSTRAIN_MARKER = "<|constrain|>"
FUNCTIONS_CHANNEL_NOTE = "Calls to these tools must go to the commentary channel: 'functions'."


@dataclass(frozen=True)
class RenderConfig:
    """``auto_drop_analysis``: drop analysis messages that precede the conversation's first ``final``
    message when the last assistant message is a ``final`` one (openai-harmony's default)."""

    auto_drop_analysis: bool = True


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    return Tokenizer.load()


def _tok(tokenizer: Tokenizer | None) -> Tokenizer:
    return tokenizer if tokenizer is not None else default_tokenizer()


def stop_tokens(tokenizer: Tokenizer | None = None) -> list[int]:
    """Tokens that end any sampled message: ``<|return|>``, ``<|call|>``, ``<|end|>``."""
    return [Tokenizer.RETURN, Tokenizer.CALL, Tokenizer.END]


def stop_tokens_for_assistant_actions(tokenizer: Tokenizer | None = None) -> list[int]:
    """Tokens that end an assistant action (a final answer or a tool call): ``<|return|>``, ``<|call|>``."""
    return [Tokenizer.RETURN, Tokenizer.CALL]


def system_content_text(sys: SystemContent, conversation_has_function_tools: bool = False) -> str:
    """The text of a system message."""
    sections: list[str] = []
    top = []
    if sys.model_identity is not None:
        top.append(sys.model_identity)
    if sys.knowledge_cutoff is not None:
        top.append(f"Knowledge cutoff: {sys.knowledge_cutoff}")
    if sys.conversation_start_date is not None:
        top.append(f"Current date: {sys.conversation_start_date}")
    if top:
        sections.append("\n".join(top))
    if sys.reasoning_effort is not None:
        sections.append(f"Reasoning: {sys.reasoning_effort.value.lower()}")
    if sys.tools:
        sections.append(render_tools_section(sys.tools))
    cc = sys.channel_config
    if cc is not None and cc.valid_channels:
        header = f"# Valid channels: {', '.join(cc.valid_channels)}."
        if cc.channel_required:
            header += " Channel must be included for every message."
        if conversation_has_function_tools:
            header += "\n" + FUNCTIONS_CHANNEL_NOTE
        sections.append(header)
    return "\n\n".join(sections)


def developer_content_text(dev: DeveloperContent) -> str:
    """The text of a developer message: ``# Instructions``, the ``# Tools`` section, ``# Response Formats``."""
    sections: list[str] = []
    if dev.instructions is not None:
        sections += ["# Instructions", dev.instructions]
    if dev.tools:
        sections.append(render_tools_section(dev.tools))
    if dev.response_formats:
        sections.append("# Response Formats")
        for name, description, schema in dev.response_formats:
            body = (f"// {description}\n" if description else "") + json.dumps(schema, separators=(",", ":"))
            sections += [f"## {name}", body]
    return "\n\n".join(sections)


def render(
    message: Message, *, conversation_has_function_tools: bool = False, tokenizer: Tokenizer | None = None
) -> list[int]:
    """One message, from ``<|start|>`` to its ``<|end|>`` (``<|call|>`` for an assistant tool call)."""
    tok = _tok(tokenizer)
    out: list[int] = []
    _render_into(tok, message, out, conversation_has_function_tools)
    return out


def _render_into(tok: Tokenizer, message: Message, out: list[int], has_functions: bool) -> None:
    role = message.author.role
    out.append(Tokenizer.START)
    if role is Role.TOOL:
        if not message.author.name:
            raise HarmonyError("a tool message needs an author name (e.g. 'functions.get_weather')")
        out += tok.encode(message.author.name)
    else:
        out += tok.encode(role.value)
        if message.author.name is not None:
            out += tok.encode(f":{message.author.name}")
    if message.recipient is not None and message.recipient != "all":
        out += tok.encode(f" to={message.recipient}")
    if message.channel is not None:
        out.append(Tokenizer.CHANNEL)
        out += tok.encode(message.channel)
    if message.content_type is not None:
        ct = message.content_type
        if ct.startswith(CONSTRAIN_MARKER):
            out += tok.encode(" ")
            out.append(Tokenizer.CONSTRAIN)
            rest = ct[len(CONSTRAIN_MARKER) :]
            if rest:
                out += tok.encode(rest)
        else:
            out += tok.encode(f" {ct}")
    out.append(Tokenizer.MESSAGE)
    for content in message.content:
        if isinstance(content, TextContent):
            out += tok.encode(content.text)
        elif isinstance(content, SystemContent):
            if role is not Role.SYSTEM:
                raise HarmonyError(
                    f"system content may only appear in a system message, found in a {role.value} message"
                )
            out += tok.encode(system_content_text(content, has_functions))
        elif isinstance(content, DeveloperContent):
            if role is not Role.DEVELOPER:
                raise HarmonyError(
                    f"developer content may only appear in a developer message, found in a {role.value} message"
                )
            out += tok.encode(developer_content_text(content))
        else:
            raise HarmonyError(f"unsupported message content {type(content).__name__}")
    if role is Role.ASSISTANT and message.recipient is not None:
        out.append(Tokenizer.CALL)
    else:
        out.append(Tokenizer.END)


def conversation_has_function_tools(messages: Iterable[Message]) -> bool:
    """True when a developer content declares a non-empty ``functions`` namespace."""
    return any(isinstance(c, DeveloperContent) and c.has_function_tools() for m in messages for c in m.content)


def visible_messages(messages: list[Message], config: RenderConfig | None = None) -> list[Message]:
    """The messages that get rendered: openai-harmony's chain-of-thought dropping rule.

    When the last assistant message is on the ``final`` channel, analysis messages before the
    conversation's first ``final`` message are dropped. (Analysis after that first final is kept.)
    """
    config = config or RenderConfig()
    last_assistant = next((m for m in reversed(messages) if m.author.role is Role.ASSISTANT), None)
    if not (config.auto_drop_analysis and last_assistant is not None and last_assistant.channel == "final"):
        return list(messages)
    first_final = next((i for i, m in enumerate(messages) if m.channel == "final"), None)
    if first_final is None:
        return list(messages)
    return [m for i, m in enumerate(messages) if not (i < first_final and m.channel == "analysis")]


def _messages(conversation: "Conversation | Iterable[Message]") -> list[Message]:
    return list(conversation.messages if isinstance(conversation, Conversation) else conversation)


def render_conversation(
    conversation: "Conversation | Iterable[Message]",
    config: RenderConfig | None = None,
    *,
    tokenizer: Tokenizer | None = None,
) -> list[int]:
    """Every message, each closed by its own end token."""
    tok = _tok(tokenizer)
    messages = _messages(conversation)
    has_functions = conversation_has_function_tools(messages)
    out: list[int] = []
    for message in visible_messages(messages, config):
        _render_into(tok, message, out, has_functions)
    return out


def render_conversation_for_completion(
    conversation: "Conversation | Iterable[Message]",
    next_role: "Role | str",
    config: RenderConfig | None = None,
    *,
    tokenizer: Tokenizer | None = None,
) -> list[int]:
    """The conversation followed by ``<|start|>{next_role}``: the prompt to sample the next message from."""
    tok = _tok(tokenizer)
    out = render_conversation(conversation, config, tokenizer=tok)
    out.append(Tokenizer.START)
    out += tok.encode(Role.parse(next_role).value)
    return out


def render_conversation_for_training(
    conversation: "Conversation | Iterable[Message]",
    config: RenderConfig | None = None,
    *,
    tokenizer: Tokenizer | None = None,
) -> list[int]:
    """Like :func:`render_conversation`, but a last assistant ``final`` message ends with ``<|return|>``."""
    messages = _messages(conversation)
    out = render_conversation(messages, config, tokenizer=tokenizer)
    if messages and out:
        last = messages[-1]
        if last.author.role is Role.ASSISTANT and last.channel == "final":
            out[-1] = Tokenizer.RETURN
    return out
