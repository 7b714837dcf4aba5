"""Developer-declared functions: schemas from signatures, loading a user module, calling."""

import asyncio
import json
import textwrap

import pytest

from gptoss.harmony import DeveloperContent, Message, Role, developer_content_text
from gptoss.tools import Toolbox, make_toolbox
from gptoss.tools.base import ToolCall, ToolError
from gptoss.tools.functions import FunctionsTool, function_tool, schema_for

MODULE = '''
import asyncio
from enum import Enum
from typing import Literal, Optional

from gptoss.tools.functions import function_tool


class Unit(Enum):
    C = "celsius"
    F = "fahrenheit"


def get_weather(city: str, unit: Literal["C", "F"] = "C", days: Optional[int] = None) -> dict:
    """Current weather for a city.

    Args:
        city: the city's name, e.g. "Paris"
        unit: temperature unit
    """
    return {"city": city, "temperature": 21, "unit": unit}


async def slow_add(a: float, b: float) -> float:
    """Add two numbers, slowly."""
    await asyncio.sleep(0.01)
    return a + b


@function_tool(name="lookup", description="Look a word up.",
               parameters={"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]})
def _lookup_impl(word):
    return f"{word}: a word"


def fails(x: int) -> str:
    """Always fails."""
    raise RuntimeError(f"cannot handle {x}")


def tags(names: list[str], unit: Unit = Unit.C) -> str:
    """Joins tags."""
    return ",".join(names)


TOOLS = [get_weather, slow_add, _lookup_impl, fails, tags]
'''


@pytest.fixture()
def module_path(tmp_path):
    path = tmp_path / "mytools.py"
    path.write_text(textwrap.dedent(MODULE))
    return path


def call(name, args):
    text = args if isinstance(args, str) else json.dumps(args)
    return ToolCall(
        Message.from_role_and_content(Role.ASSISTANT, text)
        .with_recipient(f"functions.{name}")
        .with_channel("commentary")
        .with_content_type("<|constrain|>json")
    )


def test_schemas_from_signatures_and_docstrings(module_path):
    tool = FunctionsTool.from_module(module_path)
    ns = tool.namespace()
    assert ns.name == "functions" and tool.placement == "developer"
    by_name = {t.name: t for t in ns.tools}
    assert list(by_name) == ["get_weather", "slow_add", "lookup", "fails", "tags"]
    weather = by_name["get_weather"]
    assert weather.description == "Current weather for a city."
    assert weather.parameters == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": 'the city\'s name, e.g. "Paris"'},
            "unit": {"enum": ["C", "F"], "description": "temperature unit", "default": "C"},
            "days": {"type": "integer", "default": None},
        },
        "required": ["city"],
    }
    assert by_name["slow_add"].parameters["properties"] == {"a": {"type": "number"}, "b": {"type": "number"}}
    assert by_name["lookup"].description == "Look a word up."
    assert by_name["tags"].parameters["properties"] == {
        "names": {"type": "array", "items": {"type": "string"}},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
    }
    # what the model sees: the developer message's functions namespace
    text = developer_content_text(Toolbox([tool]).developer_content(DeveloperContent.new()))
    assert "namespace functions {" in text and "// Current weather for a city." in text
    assert "type get_weather = (_: {" in text


def test_calling_functions(module_path):
    tool = FunctionsTool.from_module(module_path)

    def run(name, args):
        return asyncio.run(tool.run(call(name, args)))

    r = run("get_weather", {"city": "Paris"})
    assert r.status == "completed" and json.loads(r.output) == {"city": "Paris", "temperature": 21, "unit": "C"}
    m = r.messages[0]
    assert m.author.name == "functions.get_weather" and m.recipient == "assistant" and m.channel == "commentary"
    assert run("slow_add", {"a": 1.5, "b": 2}).output == "3.5"
    assert run("lookup", {"word": "panda"}).output == "panda: a word"
    assert run("tags", {"names": ["a", "b"]}).output == "a,b"
    r = run("fails", {"x": 3})
    assert r.status == "failed" and r.output == "Error: RuntimeError: cannot handle 3"
    assert "bad arguments" in run("get_weather", {"town": "Paris"}).output
    assert "must be a JSON object" in run("get_weather", "Paris").output
    assert "no function named 'nope'" in run("nope", {}).output


def test_declared_functions_run_elsewhere():
    from gptoss.harmony import ToolDescription

    tool = FunctionsTool.declared([ToolDescription.new("get_time", "The time.", {"type": "object", "properties": {}})])
    assert not tool.executable("functions.get_time")
    r = asyncio.run(tool.run(call("get_time", {})))
    assert r.status == "failed" and "no implementation" in r.output


def test_decorator_and_errors(tmp_path):
    @function_tool
    def plain(n: int = 3):
        """Plain."""
        return n

    assert FunctionsTool([plain]).namespace().tools[0].name == "plain"
    assert schema_for(plain) == {"type": "object", "properties": {"n": {"type": "integer", "default": 3}}}
    with pytest.raises(ToolError, match="is not a file"):
        FunctionsTool.from_module(tmp_path / "missing.py")
    bad = tmp_path / "bad.py"
    bad.write_text("raise ValueError('boom')\n")
    with pytest.raises(ToolError, match="importing .*bad.py failed: ValueError: boom"):
        FunctionsTool.from_module(bad)
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(ToolError, match="no public functions"):
        FunctionsTool.from_module(empty)
    with pytest.raises(ToolError, match="unknown tool 'shell'"):
        make_toolbox("python,shell")
