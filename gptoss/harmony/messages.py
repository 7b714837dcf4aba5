"""Harmony messages: roles, authors, contents, channels, recipients, content types, conversations.

``to_dict``/``from_dict`` and ``to_json``/``from_json`` use openai-harmony's JSON shape.
The ``with_*`` builders return a modified copy.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterable, Iterator, Mapping, Union

from gptoss.harmony.errors import HarmonyError
from gptoss.harmony.system import DeveloperContent, SystemContent


class Role(str, Enum):
    """Who wrote a message."""

    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"
    DEVELOPER = "developer"
    TOOL = "tool"

    @classmethod
    def parse(cls, value: "str | Role") -> "Role":
        if isinstance(value, Role):
            return value
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(r.value for r in cls)
            raise HarmonyError(f"unknown role {value!r}: expected one of {names}") from None

    @classmethod
    def lookup(cls, value: str) -> "Role | None":
        """The role named exactly ``value``, or None."""
        return _ROLES_BY_NAME.get(value)


_ROLES_BY_NAME = {r.value: r for r in Role}


@dataclass(frozen=True)
class Author:
    """A role plus an optional name: a tool message's author is e.g. ``Author(Role.TOOL, "functions.get_weather")``."""

    role: Role
    name: str | None = None

    @classmethod
    def new(cls, role: Role, name: str) -> "Author":
        return cls(role=role, name=name)


@dataclass
class TextContent:
    """Plain text."""

    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": "text", "text": self.text}


Content = Union[TextContent, SystemContent, DeveloperContent]


def content_from_dict(raw: Any) -> Content:
    """One content item from its JSON shape (``{"type": "text" | "system_content" | "developer_content", ...}``)."""
    if not isinstance(raw, Mapping):
        raise HarmonyError(f"message content item: expected a JSON object, found {type(raw).__name__}")
    kind = raw.get("type")
    if kind == "text":
        text = raw.get("text")
        if not isinstance(text, str):
            raise HarmonyError(f"text content: 'text' must be a string, found {type(text).__name__}")
        return TextContent(text)
    if kind == "system_content":
        return SystemContent.from_dict(raw)
    if kind == "developer_content":
        return DeveloperContent.from_dict(raw)
    raise HarmonyError(
        f"message content item: unknown type {kind!r} (expected text, system_content or developer_content)"
    )


def _as_content(content: "str | Content") -> Content:
    return TextContent(content) if isinstance(content, str) else content


@dataclass
class Message:
    """One Harmony message:
    ``<|start|>{author}[ to={recipient}][<|channel|>{channel}][ {content_type}]<|message|>...``."""

    author: Author
    content: list[Content] = field(default_factory=list)
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None

    # -- constructors --------------------------------------------------------------------
    @classmethod
    def from_author_and_content(cls, author: Author, content: "str | Content") -> "Message":
        return cls(author=author, content=[_as_content(content)])

    @classmethod
    def from_role_and_content(cls, role: Role, content: "str | Content") -> "Message":
        return cls.from_author_and_content(Author(Role.parse(role)), content)

    @classmethod
    def from_role_and_contents(cls, role: Role, contents: Iterable[Content]) -> "Message":
        return cls(author=Author(Role.parse(role)), content=list(contents))

    # -- builders (copies) -------------------------------------------------------------
    def adding_content(self, content: "str | Content") -> "Message":
        return dataclasses.replace(self, content=[*copy.deepcopy(self.content), _as_content(content)])

    def with_channel(self, channel: str | None) -> "Message":
        return dataclasses.replace(self, content=copy.deepcopy(self.content), channel=channel)

    def with_recipient(self, recipient: str | None) -> "Message":
        return dataclasses.replace(self, content=copy.deepcopy(self.content), recipient=recipient)

    def with_content_type(self, content_type: str | None) -> "Message":
        return dataclasses.replace(self, content=copy.deepcopy(self.content), content_type=content_type)

    # -- accessors ---------------------------------------------------------------------
    @property
    def role(self) -> Role:
        return self.author.role

    @property
    def text(self) -> str:
        """The concatenated text contents (system/developer contents are skipped)."""
        return "".join(c.text for c in self.content if isinstance(c, TextContent))

    # -- JSON interchange --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """openai-harmony's ``Message.to_dict()`` shape."""
        out: dict[str, Any] = {
            "role": self.author.role.value,
            "name": self.author.name,
            "content": [c.to_dict() for c in self.content],
        }
        if self.channel is not None:
            out["channel"] = self.channel
        if self.recipient is not None:
            out["recipient"] = self.recipient
        if self.content_type is not None:
            out["content_type"] = self.content_type
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "Message":
        """Read openai-harmony's shape; ``content`` may also be a plain string (its Rust shorthand)."""
        if not isinstance(raw, Mapping):
            raise HarmonyError(f"message: expected a JSON object, found {type(raw).__name__}")
        if "role" not in raw:
            raise HarmonyError(f"message: missing 'role' (keys found: {', '.join(map(str, raw)) or 'none'})")
        role = Role.parse(raw["role"])
        name = _opt_str(raw, "name")
        contents = raw.get("content", [])
        if isinstance(contents, str):
            items: list[Content] = [TextContent(contents)]
        elif isinstance(contents, list):
            items = [content_from_dict(c) for c in contents]
        else:
            raise HarmonyError(f"message content: expected a string or a list, found {type(contents).__name__}")
        return cls(
            author=Author(role, name),
            content=items,
            channel=_opt_str(raw, "channel"),
            recipient=_opt_str(raw, "recipient"),
            content_type=_opt_str(raw, "content_type"),
        )

    @classmethod
    def from_json(cls, text: str) -> "Message":
        return cls.from_dict(_loads(text, "message"))


@dataclass
class Conversation:
    """An ordered list of messages."""

    messages: list[Message] = field(default_factory=list)

    @classmethod
    def from_messages(cls, messages: Iterable[Message]) -> "Conversation":
        return cls(messages=list(messages))

    def __iter__(self) -> Iterator[Message]:
        return iter(self.messages)

    def __len__(self) -> int:
        return len(self.messages)

    def to_dict(self) -> dict[str, Any]:
        return {"messages": [m.to_dict() for m in self.messages]}

    def to_json(self) -> str:
        """Same string as openai-harmony's ``Conversation.to_json()``."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, raw: Any) -> "Conversation":
        """``{"messages": [...]}``; a bare list of messages is accepted too."""
        if isinstance(raw, Mapping):
            if "messages" not in raw:
                raise HarmonyError("conversation: missing 'messages' (expected {\"messages\": [...]})")
            raw = raw["messages"]
        if not isinstance(raw, list):
            raise HarmonyError(f"conversation: 'messages' must be a list, found {type(raw).__name__}")
        out = []
        for i, m in enumerate(raw):
            try:
                out.append(Message.from_dict(m))
            except HarmonyError as exc:
                raise HarmonyError(f"conversation message {i}: {exc}") from None
        return cls(out)

    @classmethod
    def from_json(cls, text: str) -> "Conversation":
        return cls.from_dict(_loads(text, "conversation"))


def _loads(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise HarmonyError(f"{what}: not valid JSON ({exc})") from None


def _opt_str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise HarmonyError(f"message {key}: expected a string, found {type(value).__name__}")
    return value
