"""The tools gpt-oss was trained to use: ``browser`` (search, open, find, with citations), ``python``
(a stateful, sandboxed Jupyter kernel) and developer-declared ``functions``.

Tools take Harmony messages and return Harmony messages; they know nothing of the model. The loop that
runs them between model turns is :mod:`gptoss.conversation.tool_loop`.
"""

from gptoss.tools.base import Tool, Toolbox, ToolCall, ToolError, ToolResult, ToolUsageError, tool_message

__all__ = ["Tool", "ToolCall", "ToolError", "ToolResult", "ToolUsageError", "Toolbox", "make_toolbox", "tool_message"]

TOOL_NAMES = ("browser", "python")


def make_toolbox(
    names: "list[str] | str" = (),
    *,
    corpus: str | None = None,
    functions: str | None = None,
    python_config=None,
    web: bool = True,
    browser_allow_hosts: str | None = None,
) -> Toolbox:
    """A toolbox from names (``"browser,python"``), a corpus folder for the browser, and a module of
    functions. ``browser_allow_hosts``: the operator's allow-list that opens non-public hosts to the
    browser (``--browser-allow-hosts``; None: ``GPTOSS_BROWSER_ALLOW_HOSTS``). Raises ToolError for an
    unknown name or a bad allow-list entry."""
    from gptoss.tools.functions import FunctionsTool

    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in TOOL_NAMES]
    if unknown:
        raise ToolError(f"--tools: unknown tool {unknown[0]!r} (expected {', '.join(TOOL_NAMES)})")
    functions_tool = FunctionsTool.from_module(functions) if functions else None
    tools = []
    for name in dict.fromkeys(names):
        if name == "browser":
            from gptoss.tools.browser import BrowserTool, make_backend

            tools.append(BrowserTool(make_backend(corpus, web=web, allow_hosts=browser_allow_hosts)))
        elif name == "python":
            from gptoss.tools.python import PythonTool

            tools.append(PythonTool(python_config))
    if functions_tool is not None:
        tools.append(functions_tool)
    return Toolbox(tools)
