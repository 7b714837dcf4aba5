"""Tools of MCP servers (the Model Context Protocol, over the ``mcp`` SDK's streamable HTTP client) as a
Harmony namespace: an MCP server the operator declared (``gptoss serve --mcp NAME=URL``) becomes the
namespace ``NAME``, each of its tools ``NAME.TOOL`` with the tool's input schema as its parameters; the
model calls ``to=NAME.TOOL`` with JSON arguments and the tool's text result is its answer.

What an MCP server returns is tool output, hence hostile: only text content reaches the model (other
content is named, not passed on), at most :data:`MAX_RESULT_CHARS` characters of it, and every call and
listing is bounded in time.
"""

from __future__ import annotations

import asyncio
import builtins
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from gptoss.errors import GptossError
from gptoss.harmony import ToolDescription, ToolNamespaceConfig
from gptoss.tools.base import Tool, ToolCall, ToolResult, ToolUsageError, tool_message

MAX_RESULT_CHARS = 16_000  # of one call's text, as the model reads it
MAX_TOOLS = 128  # listed from one server
TIMEOUT_S = 30.0  # one listing or one call
_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")  # a Harmony namespace name (no '.')
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")  # what a recipient NS.TOOL can hold


class McpError(GptossError):
    """An MCP server cannot be reached or listed."""


def parse_mcp_servers(specs: list[str]) -> dict[str, str]:
    """``--mcp NAME=URL`` flags -> {name: url}; a malformed one is a GptossError naming it."""
    servers: dict[str, str] = {}
    for spec in specs:
        name, sep, url = spec.partition("=")
        if not sep or not _LABEL.match(name):
            raise GptossError(
                f"--mcp {spec!r}: expected NAME=URL, NAME of letters, digits, '_' or '-' starting with a letter"
            )
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise GptossError(f"--mcp {spec!r}: expected an http(s) URL of a streamable HTTP MCP server")
        if name in servers:
            raise GptossError(f"--mcp {spec!r}: the name {name!r} is declared twice")
        servers[name] = url
    return servers


@dataclass
class McpToolInfo:
    name: str
    description: str
    input_schema: dict[str, Any] | None
    annotations: dict[str, Any] | None = None


def _client(url: str):
    from mcp import Client

    return Client(url, read_timeout_seconds=TIMEOUT_S, cache=None)


async def list_mcp_tools(label: str, url: str, timeout: float = TIMEOUT_S) -> list[McpToolInfo]:
    """The tools the MCP server ``label`` at ``url`` offers (at most :data:`MAX_TOOLS`)."""

    async def listing() -> list[McpToolInfo]:
        async with _client(url) as client:
            result = await client.list_tools()
        out = []
        for t in result.tools[:MAX_TOOLS]:
            if not isinstance(t.name, str) or not _TOOL_NAME.match(t.name):
                continue  # a name no Harmony recipient can hold is not offered
            schema = t.input_schema if isinstance(t.input_schema, dict) else None
            ann = t.annotations.model_dump(exclude_none=True) if getattr(t, "annotations", None) else None
            out.append(McpToolInfo(t.name, (t.description or "")[:4000], schema, ann))
        return out

    try:
        return await asyncio.wait_for(listing(), timeout)
    except asyncio.TimeoutError:
        raise McpError(f"MCP server {label!r}: listing its tools took over {timeout:g} s") from None
    except Exception as exc:  # noqa: BLE001 - any transport or protocol failure, in one line
        raise McpError(f"MCP server {label!r}: cannot list its tools ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    groups = getattr(builtins, "BaseExceptionGroup", ())  # Python 3.11+ (anyio's backport before)
    while groups and isinstance(exc, groups) and exc.exceptions:  # anyio task groups wrap the cause
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:300]


def result_text(content: list[Any], limit: int = MAX_RESULT_CHARS) -> str:
    """The text an MCP call result shows the model: its text parts, other parts named, capped at ``limit``."""
    parts: list[str] = []
    size = 0
    for block in content:
        kind = getattr(block, "type", None)
        text = getattr(block, "text", None) if kind == "text" else f"[{kind} content omitted]"
        if not isinstance(text, str):
            continue
        parts.append(text)
        size += len(text)
        if size > limit:
            break
    text = "\n".join(parts)
    if len(text) > limit:
        text = text[:limit] + f"\n[truncated: the result was over {limit} characters]"
    return text


@dataclass
class McpTool(Tool):
    """The tools of one MCP server, as the Harmony namespace ``label``."""

    label: str
    url: str
    tools: list[McpToolInfo] = field(default_factory=list)
    description: str | None = None
    placement = "system"

    def __post_init__(self) -> None:
        self.name = self.label

    def namespace(self) -> ToolNamespaceConfig:
        return ToolNamespaceConfig(
            name=self.label,
            description=self.description or f"Tools of the MCP server {self.label}.",
            tools=[ToolDescription.new(t.name, t.description, t.input_schema) for t in self.tools],
        )

    def recipients(self) -> dict[str, dict[str, Any] | None]:
        """``LABEL.TOOL`` -> the JSON Schema of its arguments."""
        return {f"{self.label}.{t.name}": t.input_schema for t in self.tools}

    def describe_call(self, call: ToolCall) -> dict[str, Any]:
        return {"server_label": self.label, "name": call.function, "arguments": call.text}

    async def run(self, call: ToolCall) -> ToolResult:
        name = call.function or ""
        author = f"{self.label}.{name}"
        if name not in {t.name for t in self.tools}:
            text = f"Error: the MCP server {self.label} offers no tool {name!r}"
            return ToolResult([tool_message(author, text, call.channel)], "failed", {"error": text})
        try:
            arguments = call.json_arguments()
        except ToolUsageError as exc:
            return ToolResult([tool_message(author, f"Error: {exc}", call.channel)], "failed", {"error": str(exc)})

        async def calling():
            async with _client(self.url) as client:
                return await client.call_tool(name, arguments)

        try:
            result = await asyncio.wait_for(calling(), TIMEOUT_S)
        except asyncio.TimeoutError:
            text = f"Error: the MCP tool {author} did not answer within {TIMEOUT_S:g} s"
            return ToolResult([tool_message(author, text, call.channel)], "incomplete", {"error": text})
        except Exception as exc:  # noqa: BLE001 - the transport failed: the model is told, the response goes on
            text = f"Error: the MCP server {self.label} failed ({_reason(exc)})"
            return ToolResult([tool_message(author, text, call.channel)], "failed", {"error": text})
        text = result_text(list(result.content or []))
        if result.is_error:
            return ToolResult(
                [tool_message(author, text or "Error", call.channel)], "failed", {"error": text or "error"}
            )
        return ToolResult([tool_message(author, text, call.channel)], "completed", {"output": text})

    def new_conversation(self) -> McpTool:
        return McpTool(self.label, self.url, list(self.tools), self.description)
