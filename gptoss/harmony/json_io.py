"""Reading and writing Harmony JSON documents (conversations, token lists, parsed messages)."""

from __future__ import annotations

import json
from typing import Any, Iterable

from gptoss.harmony.errors import HarmonyError
from gptoss.harmony.messages import Conversation, Message
from gptoss.tokenizer import VOCAB_SIZE


def load_conversation(text: str, source: str = "conversation") -> Conversation:
    """A conversation in openai-harmony's JSON shape (``{"messages": [...]}`` or a bare list)."""
    if not text.strip():
        raise HarmonyError(f'{source}: empty input, expected a JSON conversation {{"messages": [...]}}')
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise HarmonyError(f"{source}: not valid JSON ({exc})") from None
    try:
        return Conversation.from_dict(raw)
    except HarmonyError as exc:
        raise HarmonyError(f"{source}: {exc}") from None


def load_tokens(text: str, source: str = "tokens") -> list[int]:
    """A JSON list of token ids (``{"tokens": [...]}`` is accepted too), checked against the vocabulary."""
    if not text.strip():
        raise HarmonyError(f"{source}: empty input, expected a JSON list of token ids")
    try:
        raw: Any = json.loads(text)
    except ValueError as exc:
        raise HarmonyError(f"{source}: not valid JSON ({exc})") from None
    if isinstance(raw, dict) and "tokens" in raw:
        raw = raw["tokens"]
    if not isinstance(raw, list):
        raise HarmonyError(f"{source}: expected a JSON list of token ids, found {type(raw).__name__}")
    for i, t in enumerate(raw):
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < VOCAB_SIZE:
            raise HarmonyError(f"{source}: item {i} is {t!r}, expected a token id in [0, {VOCAB_SIZE})")
    return list(raw)


def messages_to_json(messages: Iterable[Message], indent: int | None = None) -> str:
    """A JSON list of messages in openai-harmony's ``Message.to_dict()`` shape."""
    return json.dumps([m.to_dict() for m in messages], indent=indent, ensure_ascii=False)


def messages_from_json(text: str) -> list[Message]:
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise HarmonyError(f"messages: not valid JSON ({exc})") from None
    if not isinstance(raw, list):
        raise HarmonyError(f"messages: expected a JSON list, found {type(raw).__name__}")
    return [Message.from_dict(m) for m in raw]
