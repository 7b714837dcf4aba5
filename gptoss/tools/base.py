"""The tool interface: what a tool shows the model, how a call reaches it, what comes back.

A :class:`Tool` object belongs to one conversation (its state: the browser's pages, the Python kernel);
``new_conversation()`` makes a fresh one that shares the heavy, stateless parts (a corpus index, a
configuration). A :class:`Toolbox` holds a conversation's tools, contributes their namespaces to the
Harmony system and developer messages, and routes an assistant message addressed to ``to=python``,
``to=browser.search`` or ``to=functions.NAME`` to the tool that handles it.

Tools know nothing of the model: they take Harmony messages and return Harmony messages.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gptoss.errors import GptossError
from gptoss.harmony import Author, DeveloperContent, Message, Role, SystemContent, ToolDescription, ToolNamespaceConfig


class ToolError(GptossError):
    """A tool cannot be set up as asked (a missing corpus, no Docker engine...)."""


class ToolUsageError(Exception):
    """The model called a tool wrongly; the message goes back to the model as the tool's answer."""


@dataclass
class ToolCall:
    """One assistant message addressed to a tool."""

    message: Message
    call_id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:24])

    @property
    def recipient(self) -> str:
        return self.message.recipient or ""

    @property
    def namespace(self) -> str:
        return self.recipient.split(".", 1)[0]

    @property
    def function(self) -> str | None:
        parts = self.recipient.split(".", 1)
        return parts[1] if len(parts) == 2 else None

    @property
    def text(self) -> str:
        return self.message.text

    @property
    def channel(self) -> str | None:
        return self.message.channel

    def json_arguments(self) -> dict[str, Any]:
        """The message's JSON object of arguments ({} when empty); ToolUsageError when it is not one."""
        text = self.text.strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ToolUsageError(f"arguments for {self.recipient} must be a JSON object: {exc}") from None
        if not isinstance(value, dict):
            raise ToolUsageError(f"arguments for {self.recipient} must be a JSON object, found {type(value).__name__}")
        return value


@dataclass
class ToolResult:
    """What a call produced: the tool messages to append, plus details for APIs and user interfaces.

    ``status``: ``completed``, ``failed`` (the tool reported an error to the model) or ``incomplete``
    (for instance a timeout). ``metadata`` depends on the tool (documented in docs/tools.md)."""

    messages: list[Message]
    status: str = "completed"
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def output(self) -> str:
        return "\n".join(m.text for m in self.messages)


def tool_message(author: str, text: str, channel: str | None = None) -> Message:
    """A tool's answer as the reference tools write it: author = the recipient called, to=assistant,
    on the channel of the call."""
    msg = Message.from_author_and_content(Author(Role.TOOL, author), text).with_recipient("assistant")
    return msg.with_channel(channel) if channel else msg


class Tool(ABC):
    """Something the model can call. Subclasses set ``name`` (the namespace: ``python``, ``browser``,
    ``functions``) and implement :meth:`namespace` and :meth:`run`."""

    name: str = ""
    #: where the namespace is declared: "system" (built-in tools) or "developer" (functions)
    placement: str = "system"

    @abstractmethod
    def namespace(self) -> ToolNamespaceConfig:
        """The namespace shown to the model, worded exactly as the model was trained on."""

    def handles(self, recipient: str) -> bool:
        return recipient == self.name or recipient.startswith(self.name + ".")

    def describe_call(self, call: ToolCall) -> dict[str, Any]:
        """What the call is about, before it runs (for events: e.g. a search query, the code)."""
        return {"arguments": call.text}

    @abstractmethod
    async def run(self, call: ToolCall) -> ToolResult:
        """Carry out one call. Errors the model made come back as tool messages, not exceptions."""

    async def call(self, message: Message) -> list[Message]:
        """The async call of the interface: the model's message in, tool messages out."""
        return (await self.run(ToolCall(message))).messages

    def new_conversation(self) -> Tool:
        """A tool for another conversation: same configuration and shared resources, fresh state."""
        return self.__class__()  # subclasses with configuration override this

    def state(self) -> dict[str, Any]:
        """The per-conversation state, as JSON-compatible data (for saving and debugging)."""
        return {}

    async def aclose(self) -> None:
        """Release what the conversation holds (a kernel, a container).

        A concrete default, not an abstract method: a tool that holds nothing has nothing to release, so
        this does nothing; tools with a kernel or a container override it."""
        return None

    def close(self) -> None:
        _run_sync(self.aclose())

    def sweep_stale(self) -> list[str]:
        """Remove what conversations of an earlier process that died (a crash, SIGKILL) left behind; returns
        what was removed. Called once when a server starts (blocking: run it off the event loop)."""
        return []


def _run_sync(coro) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)
        return
    coro.close()
    raise RuntimeError("Tool.close() called inside an event loop: await tool.aclose() instead")


class Toolbox:
    """The tools of one conversation, by namespace."""

    def __init__(self, tools: Iterable[Tool] = ()):
        self.tools: dict[str, Tool] = {}
        for tool in tools:
            self.add(tool)

    def add(self, tool: Tool) -> None:
        if tool.name in self.tools:
            raise ToolError(f"two tools claim the namespace {tool.name!r}")
        self.tools[tool.name] = tool

    def __bool__(self) -> bool:
        return bool(self.tools)

    def __contains__(self, name: str) -> bool:
        return name in self.tools

    def get(self, name: str) -> Tool | None:
        return self.tools.get(name)

    def find(self, recipient: str | None) -> Tool | None:
        """The tool an assistant message ``to={recipient}`` is for, if any."""
        if not recipient:
            return None
        for tool in self.tools.values():
            if tool.handles(recipient):
                return tool
        return None

    # ------------------------------------------------------------------ prompt
    def system_content(self, content: SystemContent) -> SystemContent:
        for tool in self.tools.values():
            if tool.placement == "system":
                content = content.with_tools(tool.namespace())
        return content

    def developer_content(self, content: DeveloperContent) -> DeveloperContent:
        for tool in self.tools.values():
            if tool.placement == "developer":
                ns = tool.namespace()
                if ns.tools:
                    content = content.with_tools(ns)
        return content

    def function_tools(self) -> list[ToolDescription]:
        out: list[ToolDescription] = []
        for tool in self.tools.values():
            if tool.placement == "developer":
                out += tool.namespace().tools
        return out

    # ------------------------------------------------------------------ calls
    async def run(self, call: ToolCall) -> ToolResult:
        tool = self.find(call.recipient)
        if tool is None:
            names = ", ".join(sorted(self.tools)) or "none"
            return ToolResult(
                [
                    tool_message(
                        call.recipient or "unknown",
                        f"Error: there is no tool {call.recipient!r} (tools available: {names})",
                        call.channel,
                    )
                ],
                status="failed",
            )
        return await tool.run(call)

    def cite(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """Turn the browser's citations in ``text`` into URL annotations (unchanged without a browser)."""
        browser = self.tools.get("browser")
        if browser is None or not hasattr(browser, "cite"):
            return text, []
        return browser.cite(text)

    def annotate(self, text: str) -> list[dict[str, Any]]:
        """``url_citation`` annotations for the browser's citations in ``text`` (none without a browser)."""
        browser = self.tools.get("browser")
        return browser.annotate(text) if browser is not None and hasattr(browser, "annotate") else []

    def new_conversation(self) -> Toolbox:
        return Toolbox(tool.new_conversation() for tool in self.tools.values())

    async def aclose(self) -> None:
        for tool in self.tools.values():
            await tool.aclose()

    def sweep_stale(self) -> list[str]:
        return [path for tool in self.tools.values() for path in tool.sweep_stale()]

    def close(self) -> None:
        _run_sync(self.aclose())

    async def __aenter__(self) -> Toolbox:  # noqa: PYI034
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
