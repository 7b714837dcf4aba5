"""Our tools as an MCP server (``gptoss mcp``), on the ``mcp`` SDK's ``MCPServer``: the sandboxed Python tool as
``python`` and the browser as ``browser_search``, ``browser_open`` and ``browser_find``, for other agents.

Each MCP session (the one client of a stdio process, or one ``Mcp-Session-Id`` over streamable HTTP) gets
its own conversation of the tools (a Python kernel, the browser's pages), made from the templates given,
started on its first call; at most :data:`MAX_SESSIONS` are kept, the least recently used closed first. A
stateless HTTP request (no session id: the 2026 protocol) gets fresh tools, closed after the call.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from mcp.server.mcpserver import Context, MCPServer

from gptoss.harmony import Message, Role
from gptoss.tools.base import Toolbox, ToolCall

MAX_SESSIONS = 16

PYTHON_DESCRIPTION = (
    "Run Python code in a sandboxed, stateful kernel (variables persist between calls of one "
    "session) and return what it printed. No network access."
)


class ToolSessions:
    """One conversation of the tools per MCP session."""

    def __init__(self, templates: Toolbox):
        self.templates = templates
        self.sessions: OrderedDict[str, Toolbox] = OrderedDict()

    async def toolbox(self, key: str) -> Toolbox:
        box = self.sessions.pop(key, None)
        if box is None:
            box = self.templates.new_conversation()
            if len(self.sessions) >= MAX_SESSIONS:
                _, oldest = self.sessions.popitem(last=False)
                await oldest.aclose()
        self.sessions[key] = box
        return box

    async def run(self, key: str | None, recipient: str, text: str) -> str:
        box = await self.toolbox(key) if key is not None else self.templates.new_conversation()
        message = Message.from_role_and_content(Role.ASSISTANT, text).with_channel("analysis").with_recipient(recipient)
        try:
            result = await box.run(ToolCall(message))
        finally:
            if key is None:
                await box.aclose()
        if result.status != "completed":
            raise RuntimeError(result.output or f"{recipient} failed")  # the SDK answers it as a tool error
        return result.output

    async def aclose(self) -> None:
        while self.sessions:
            _, box = self.sessions.popitem()
            await box.aclose()


def build_server(templates: Toolbox):
    """An ``MCPServer`` serving the python and browser tools found in ``templates``."""
    sessions = ToolSessions(templates)
    srv = MCPServer("gptoss", instructions="Tools of gptoss: a sandboxed Python kernel and a browser.")
    srv.tool_sessions = sessions  # type: ignore[attr-defined]

    def key(ctx: Context) -> str | None:
        """Whose conversation a call belongs to: the stdio client's, an HTTP session's, or none (stateless)."""
        headers = ctx.headers
        if headers is None:
            return "stdio"
        return headers.get("mcp-session-id")

    if templates.get("python") is not None:

        @srv.tool(name="python", description=PYTHON_DESCRIPTION)
        async def python(code: str, ctx: Context) -> str:
            return await sessions.run(key(ctx), "python", code)

    if templates.get("browser") is not None:

        def args(**kw: Any) -> str:
            return json.dumps({k: v for k, v in kw.items() if v is not None})

        @srv.tool(name="browser_search", description="Search for information and show the top results as a page.")
        async def browser_search(query: str, ctx: Context, topn: int = 10) -> str:
            return await sessions.run(key(ctx), "browser.search", args(query=query, topn=topn))

        @srv.tool(
            name="browser_open",
            description="Open a result of the last page by its number, or a URL; "
            "scroll with loc (the line to start at) and num_lines.",
        )
        async def browser_open(
            ctx: Context, id: int | str = -1, cursor: int = -1, loc: int = -1, num_lines: int = -1
        ) -> str:
            return await sessions.run(
                key(ctx), "browser.open", args(id=id, cursor=cursor, loc=loc, num_lines=num_lines)
            )

        @srv.tool(name="browser_find", description="Find a pattern in the page open at cursor (the last by default).")
        async def browser_find(pattern: str, ctx: Context, cursor: int = -1) -> str:
            return await sessions.run(key(ctx), "browser.find", args(pattern=pattern, cursor=cursor))

    return srv
