"""Developer-declared functions: the ``functions`` namespace of the Harmony developer message.

    # mytools.py  (gptoss chat --functions mytools.py)
    def get_weather(city: str, unit: Literal["C", "F"] = "C") -> dict:
        '''Current weather for a city.

        Args:
            city: the city's name, e.g. "Paris"
            unit: temperature unit
        '''
        return {"city": city, "temperature": 21, "unit": unit}

Every public function defined in the module becomes a tool; ``__all__`` or a ``TOOLS`` list narrows the
choice. The description comes from the docstring, the JSON Schema of the arguments from the type hints
and defaults (``Args:`` lines describe parameters), or explicitly from the :func:`function_tool`
decorator. Functions may be sync or async; results that are not strings are sent as JSON.

In an API server the functions are only declared (``FunctionsTool.declared(...)``): calls are returned
to the client, which runs them.
"""

from __future__ import annotations

import asyncio
import enum
import importlib.util
import inspect
import json
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptoss.harmony import ToolDescription, ToolNamespaceConfig
from gptoss.tools.base import Tool, ToolCall, ToolError, ToolResult, ToolUsageError, tool_message

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def function_tool(
    fn: Callable | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: dict | None = None,
):
    """Mark a function as a tool, optionally giving its name, description or JSON Schema explicitly."""

    def mark(f: Callable) -> Callable:
        f.__gptoss_tool__ = {"name": name, "description": description, "parameters": parameters}
        return f

    return mark(fn) if fn is not None else mark


# ---------------------------------------------------------------------- schemas from signatures
def _type_schema(tp: Any) -> dict:
    if tp is inspect.Parameter.empty or tp is Any:
        return {}
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(types, "UnionType", None)):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _type_schema(options[0])
        return {"anyOf": [_type_schema(a) for a in options]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin is typing.Annotated:
        schema = _type_schema(args[0])
        for extra in args[1:]:
            if isinstance(extra, str):
                schema["description"] = extra
        return schema
    if origin in (list, tuple, set, frozenset, typing.Sequence, typing.Iterable) or tp in (list, tuple, set):
        schema: dict = {"type": "array"}
        if args and args[0] is not Ellipsis:
            schema["items"] = _type_schema(args[0])
        return schema
    if origin in (dict, typing.Mapping) or tp is dict:
        return {"type": "object"}
    if inspect.isclass(tp) and issubclass(tp, enum.Enum):
        return {"type": "string", "enum": [m.value for m in tp]}
    table = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
    if tp in table:
        return {"type": table[tp]}
    return {}


def _doc_parts(doc: str | None) -> tuple[str, dict[str, str]]:
    """(description, {param: description}) from a docstring with an ``Args:`` section (Google style)."""
    doc = inspect.cleandoc(doc or "")
    match = re.search(r"^(Args|Arguments|Parameters):\s*$", doc, flags=re.MULTILINE)
    if not match:
        return doc.strip(), {}
    description = doc[: match.start()].strip()
    params: dict[str, str] = {}
    current = None
    for line in doc[match.end() :].splitlines():
        if re.match(r"^\S", line) and line.strip().endswith(":"):  # the next section
            break
        m = re.match(r"^\s+(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", line)
        if m:
            current = m.group(1)
            params[current] = m.group(2).strip()
        elif current and line.strip():
            params[current] += " " + line.strip()
    return description, params


def schema_for(fn: Callable) -> dict:
    """JSON Schema of ``fn``'s keyword arguments, from its signature, type hints, defaults and docstring."""
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to the raw ones
        hints = {}
    _, docs = _doc_parts(fn.__doc__)
    props: dict[str, dict] = {}
    required = []
    for name, p in sig.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or name in ("self", "cls"):
            continue
        prop = _type_schema(hints.get(name, p.annotation))
        if docs.get(name):
            prop.setdefault("description", docs[name])
        if p.default is p.empty:
            required.append(name)
        elif isinstance(p.default, (str, int, float, bool)) or p.default is None:
            prop["default"] = p.default
        elif isinstance(p.default, enum.Enum):
            prop["default"] = p.default.value
        props[name] = prop
    schema: dict = {"type": "object", "properties": props}
    if required:
        schema["required"] = required
    return schema


@dataclass
class Function:
    """A declared function, with its implementation when this process runs it."""

    description: ToolDescription
    fn: Callable | None = None

    @property
    def name(self) -> str:
        return self.description.name

    @classmethod
    def from_callable(cls, fn: Callable) -> Function:
        explicit = getattr(fn, "__gptoss_tool__", {}) or {}
        name = explicit.get("name") or fn.__name__
        if not _NAME.match(name):
            raise ToolError(f"function tool name {name!r}: expected letters, digits and underscores")
        desc = explicit.get("description")
        if desc is None:
            desc = _doc_parts(fn.__doc__)[0]
        params = explicit.get("parameters")
        if params is None:
            params = schema_for(fn)
        if not isinstance(params, dict):
            raise ToolError(f"function tool {name!r}: parameters must be a JSON Schema object")
        return cls(ToolDescription.new(name, desc, params), fn)


def load_module(path: str | Path) -> types.ModuleType:
    path = Path(path)
    if not path.is_file():
        raise ToolError(f"--functions: {path} is not a file (expected a Python module defining functions)")
    name = f"gptoss_user_functions_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ToolError(f"--functions: cannot import {path} (expected a .py file)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ToolError(f"--functions: importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def functions_of(module: types.ModuleType) -> list[Callable]:
    chosen = getattr(module, "TOOLS", None)
    if chosen is None and hasattr(module, "__all__"):
        chosen = [getattr(module, n) for n in module.__all__]
    if chosen is None:
        chosen = [
            obj
            for name, obj in vars(module).items()
            if not name.startswith("_") and inspect.isfunction(obj) and obj.__module__ == module.__name__
        ]
    out = [f for f in chosen if callable(f)]
    return out


class FunctionsTool(Tool):
    """The ``functions`` namespace (declared in the developer message)."""

    name = "functions"
    placement = "developer"

    def __init__(self, functions: Iterable[Function | Callable] = (), timeout: float = 120.0):
        self.functions: dict[str, Function] = {}
        for f in functions:
            fn = f if isinstance(f, Function) else Function.from_callable(f)
            if fn.name in self.functions:
                raise ToolError(f"two functions are named {fn.name!r}")
            self.functions[fn.name] = fn
        self.timeout = timeout

    @classmethod
    def from_module(cls, path: str | Path) -> FunctionsTool:
        module = load_module(path)
        fns = functions_of(module)
        if not fns:
            raise ToolError(f"--functions: {path} defines no public functions")
        return cls(fns)

    @classmethod
    def declared(cls, descriptions: Iterable[ToolDescription]) -> FunctionsTool:
        """Functions the model may call but that run elsewhere (an API's client)."""
        return cls(Function(d) for d in descriptions)

    def namespace(self) -> ToolNamespaceConfig:
        return ToolNamespaceConfig(
            name="functions", description=None, tools=[f.description for f in self.functions.values()]
        )

    def new_conversation(self) -> FunctionsTool:
        return FunctionsTool(self.functions.values(), self.timeout)

    def executable(self, recipient: str) -> bool:
        fn = self.functions.get(recipient.split(".", 1)[1] if "." in recipient else "")
        return fn is not None and fn.fn is not None

    def describe_call(self, call: ToolCall) -> dict[str, Any]:
        return {"name": call.function or "", "arguments": call.text}

    async def run(self, call: ToolCall) -> ToolResult:
        name = call.function or ""
        fn = self.functions.get(name)
        try:
            if fn is None:
                raise ToolUsageError(
                    f"Error: no function named {name!r} (functions: {', '.join(self.functions) or 'none'})"
                )
            if fn.fn is None:
                raise ToolUsageError(f"Error: function {name!r} is declared but has no implementation here")
            args = call.json_arguments()
            output = await self._invoke(fn.fn, args)
        except ToolUsageError as exc:
            text = str(exc)
            return ToolResult(
                [tool_message(call.recipient, text if text.startswith("Error") else f"Error: {text}", call.channel)],
                status="failed",
                metadata={"name": name},
            )
        return ToolResult([tool_message(call.recipient, output, call.channel)], metadata={"name": name})

    async def _invoke(self, fn: Callable, args: dict) -> str:
        try:
            inspect.signature(fn).bind(**args)
        except TypeError as exc:
            raise ToolUsageError(f"bad arguments: {exc}") from None
        try:
            if inspect.iscoroutinefunction(fn):
                result = await asyncio.wait_for(fn(**args), self.timeout)
            else:
                result = await asyncio.wait_for(asyncio.to_thread(fn, **args), self.timeout)
                if inspect.isawaitable(result):
                    result = await asyncio.wait_for(result, self.timeout)
        except asyncio.TimeoutError:
            raise ToolUsageError(f"the function did not finish within {self.timeout:g} s") from None
        except Exception as exc:  # noqa: BLE001 - the model should see what went wrong
            raise ToolUsageError(f"{type(exc).__name__}: {exc}") from None
        if isinstance(result, str):
            return result
        try:
            return json.dumps(result, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            return str(result)
