"""System and developer message content: model identity, dates, reasoning effort, channels, tools.

The field names, defaults and JSON shapes follow openai-harmony (``SystemContent``,
``DeveloperContent``, ``ToolNamespaceConfig``...), so conversations interchange with it.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterable, Literal, Mapping

from gptoss.harmony.errors import HarmonyError

DEFAULT_MODEL_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
DEFAULT_KNOWLEDGE_CUTOFF = "2024-06"
DEFAULT_CHANNELS = ("analysis", "commentary", "final")


class ReasoningEffort(str, Enum):
    """How hard the model should think; serialised as openai-harmony does ("Low", "Medium", "High")."""

    LOW = "Low"
    MEDIUM = "Medium"
    HIGH = "High"

    @classmethod
    def parse(cls, value: "str | ReasoningEffort") -> "ReasoningEffort":
        """Accept an enum member or its name in any case ("low", "High"...)."""
        if isinstance(value, ReasoningEffort):
            return value
        for member in cls:
            if isinstance(value, str) and value.lower() == member.value.lower():
                return member
        raise HarmonyError(f"reasoning_effort: expected one of Low, Medium, High, found {value!r}")


# The efforts as the OpenAI APIs and the CLI spell them, in order of effort; ``EffortName`` is their type in
# request schemas (a pydantic Literal, so a bad value is refused naming the three).
EFFORT_NAMES: tuple[str, ...] = tuple(e.value.lower() for e in ReasoningEffort)
EffortName = Literal[EFFORT_NAMES]  # type: ignore[valid-type]


@dataclass
class ToolDescription:
    """One tool: a name, a description and an optional JSON Schema for its single argument."""

    name: str
    description: str
    parameters: dict[str, Any] | None = None

    @classmethod
    def new(cls, name: str, description: str, parameters: dict[str, Any] | None = None) -> "ToolDescription":
        return cls(name=name, description=description, parameters=parameters)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        if self.parameters is not None:
            out["parameters"] = self.parameters
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "ToolDescription":
        _expect_mapping(raw, "tool")
        name = _expect_str(raw.get("name"), "tool.name")
        description = raw.get("description", "")
        params = raw.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise HarmonyError(f"tool {name!r}: parameters must be a JSON object, found {type(params).__name__}")
        return cls(name=name, description=_expect_str(description, f"tool {name!r} description"), parameters=params)


@dataclass
class ToolNamespaceConfig:
    """A namespace of tools (``functions``, ``browser``, ``python``) as listed under ``# Tools``."""

    name: str
    description: str | None = None
    tools: list[ToolDescription] = field(default_factory=list)

    @staticmethod
    def browser() -> "ToolNamespaceConfig":
        """The built-in browsing tool (search / open / find)."""
        return ToolNamespaceConfig(name="browser", description=_BROWSER_DESCRIPTION, tools=_browser_tools())

    @staticmethod
    def python() -> "ToolNamespaceConfig":
        """The built-in stateful Python tool (a namespace without functions)."""
        return ToolNamespaceConfig(name="python", description=_PYTHON_DESCRIPTION, tools=[])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            out["description"] = self.description
        out["tools"] = [t.to_dict() for t in self.tools]
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "ToolNamespaceConfig":
        _expect_mapping(raw, "tool namespace")
        name = _expect_str(raw.get("name"), "tool namespace name")
        desc = raw.get("description")
        tools = raw.get("tools", [])
        if not isinstance(tools, list):
            raise HarmonyError(f"tool namespace {name!r}: tools must be a list, found {type(tools).__name__}")
        return cls(
            name=name,
            description=None if desc is None else _expect_str(desc, f"tool namespace {name!r} description"),
            tools=[ToolDescription.from_dict(t) for t in tools],
        )


@dataclass
class ChannelConfig:
    """The channels the model may write to, and whether every assistant message must name one."""

    valid_channels: list[str] = field(default_factory=list)
    channel_required: bool = False

    @classmethod
    def require_channels(cls, channels: Iterable[str]) -> "ChannelConfig":
        return cls(valid_channels=list(channels), channel_required=True)

    def to_dict(self) -> dict[str, Any]:
        return {"valid_channels": list(self.valid_channels), "channel_required": self.channel_required}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "ChannelConfig":
        _expect_mapping(raw, "channel_config")
        channels = raw.get("valid_channels", [])
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise HarmonyError("channel_config.valid_channels: expected a list of strings")
        return cls(valid_channels=list(channels), channel_required=bool(raw.get("channel_required", False)))


def _default_channel_config() -> ChannelConfig:
    return ChannelConfig.require_channels(DEFAULT_CHANNELS)


def _add_namespace(
    tools: dict[str, ToolNamespaceConfig] | None, ns: ToolNamespaceConfig
) -> dict[str, ToolNamespaceConfig]:
    out = dict(tools or {})
    out[ns.name] = ns
    return out


@dataclass
class SystemContent:
    """Content of the system message. ``None`` fields are not rendered.

    The ``with_*`` builders return a modified copy; the original is left unchanged.
    """

    model_identity: str | None = DEFAULT_MODEL_IDENTITY
    reasoning_effort: ReasoningEffort | None = ReasoningEffort.MEDIUM
    conversation_start_date: str | None = None
    knowledge_cutoff: str | None = DEFAULT_KNOWLEDGE_CUTOFF
    channel_config: ChannelConfig | None = field(default_factory=_default_channel_config)
    tools: dict[str, ToolNamespaceConfig] | None = None

    @classmethod
    def new(cls) -> "SystemContent":
        return cls()

    def _replace(self, **changes: Any) -> "SystemContent":
        return dataclasses.replace(copy.deepcopy(self), **changes)

    def with_model_identity(self, model_identity: str) -> "SystemContent":
        return self._replace(model_identity=model_identity)

    def with_reasoning_effort(self, effort: "ReasoningEffort | str") -> "SystemContent":
        return self._replace(reasoning_effort=ReasoningEffort.parse(effort))

    def with_conversation_start_date(self, date: str) -> "SystemContent":
        return self._replace(conversation_start_date=date)

    def with_knowledge_cutoff(self, cutoff: str) -> "SystemContent":
        return self._replace(knowledge_cutoff=cutoff)

    def with_channel_config(self, config: ChannelConfig) -> "SystemContent":
        return self._replace(channel_config=config)

    def with_required_channels(self, channels: Iterable[str]) -> "SystemContent":
        return self._replace(channel_config=ChannelConfig.require_channels(channels))

    def with_tools(self, namespace: ToolNamespaceConfig) -> "SystemContent":
        return self._replace(tools=_add_namespace(self.tools, namespace))

    def with_browser_tool(self) -> "SystemContent":
        return self.with_tools(ToolNamespaceConfig.browser())

    def with_python_tool(self) -> "SystemContent":
        return self.with_tools(ToolNamespaceConfig.python())

    def to_dict(self) -> dict[str, Any]:
        """openai-harmony's shape: ``None`` fields left out, then ``"type": "system_content"``."""
        out: dict[str, Any] = {}
        if self.model_identity is not None:
            out["model_identity"] = self.model_identity
        if self.reasoning_effort is not None:
            out["reasoning_effort"] = self.reasoning_effort.value
        if self.conversation_start_date is not None:
            out["conversation_start_date"] = self.conversation_start_date
        if self.knowledge_cutoff is not None:
            out["knowledge_cutoff"] = self.knowledge_cutoff
        if self.channel_config is not None:
            out["channel_config"] = self.channel_config.to_dict()
        if self.tools is not None:
            out["tools"] = {k: ns.to_dict() for k, ns in self.tools.items()}
        out["type"] = "system_content"
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "SystemContent":
        """Read the JSON shape. A missing field means ``None`` (as openai-harmony's renderer reads it),
        so ``from_dict(to_dict())`` round-trips exactly."""
        _expect_mapping(raw, "system_content")
        effort = raw.get("reasoning_effort")
        cc = raw.get("channel_config")
        return cls(
            model_identity=_opt_str(raw, "model_identity"),
            reasoning_effort=None if effort is None else ReasoningEffort.parse(effort),
            conversation_start_date=_opt_str(raw, "conversation_start_date"),
            knowledge_cutoff=_opt_str(raw, "knowledge_cutoff"),
            channel_config=None if cc is None else ChannelConfig.from_dict(cc),
            tools=_tools_from_dict(raw.get("tools")),
        )


@dataclass
class DeveloperContent:
    """Content of the developer message: instructions, function tools, and response formats.

    A response format (structured output) is ``(name, description, JSON Schema)``; it is rendered at the
    end of the message under ``# Response Formats`` as the Harmony format guide lays out. openai-harmony
    0.0.8 has no API for it, so that section has no oracle; everything else matches it byte for byte.
    """

    instructions: str | None = None
    tools: dict[str, ToolNamespaceConfig] | None = None
    response_formats: list[tuple[str, str, dict[str, Any]]] | None = None

    @classmethod
    def new(cls) -> "DeveloperContent":
        return cls()

    def with_instructions(self, instructions: str) -> "DeveloperContent":
        return dataclasses.replace(copy.deepcopy(self), instructions=instructions)

    def with_tools(self, namespace: ToolNamespaceConfig) -> "DeveloperContent":
        return dataclasses.replace(copy.deepcopy(self), tools=_add_namespace(self.tools, namespace))

    def with_response_format(self, name: str, schema: dict[str, Any], description: str = "") -> "DeveloperContent":
        formats = list(self.response_formats or []) + [(name, description, schema)]
        return dataclasses.replace(copy.deepcopy(self), response_formats=formats)

    def with_function_tools(self, tools: Iterable[ToolDescription]) -> "DeveloperContent":
        return self.with_tools(ToolNamespaceConfig(name="functions", description=None, tools=list(tools)))

    def has_function_tools(self) -> bool:
        """True when a non-empty ``functions`` namespace is declared (this changes the system message)."""
        ns = (self.tools or {}).get("functions")
        return ns is not None and len(ns.tools) > 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.instructions is not None:
            out["instructions"] = self.instructions
        if self.tools is not None:
            out["tools"] = {k: ns.to_dict() for k, ns in self.tools.items()}
        if self.response_formats:
            out["response_formats"] = [
                {"name": n, "description": d, "schema": sc} for n, d, sc in self.response_formats
            ]
        out["type"] = "developer_content"
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "DeveloperContent":
        _expect_mapping(raw, "developer_content")
        formats = raw.get("response_formats")
        if formats is not None and not (
            isinstance(formats, list)
            and all(
                isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(f.get("schema"), dict)
                for f in formats
            )
        ):
            raise HarmonyError("developer_content.response_formats: expected a list of {name, description, schema}")
        return cls(
            instructions=_opt_str(raw, "instructions"),
            tools=_tools_from_dict(raw.get("tools")),
            response_formats=[(f["name"], f.get("description") or "", f["schema"]) for f in formats]
            if formats
            else None,
        )


def _tools_from_dict(raw: Any) -> dict[str, ToolNamespaceConfig] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise HarmonyError(f"tools: expected an object of namespaces, found {type(raw).__name__}")
    return {str(k): ToolNamespaceConfig.from_dict(v) for k, v in raw.items()}


def _expect_mapping(raw: Any, what: str) -> None:
    if not isinstance(raw, Mapping):
        raise HarmonyError(f"{what}: expected a JSON object, found {type(raw).__name__}")


def _expect_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise HarmonyError(f"{what}: expected a string, found {type(value).__name__}")
    return value


def _opt_str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    return None if value is None else _expect_str(value, key)


# The built-in tool namespaces. The wording must stay byte-identical to openai-harmony's,
# since the model was trained on exactly this text.
_BROWSER_DESCRIPTION = (
    "Tool for browsing.\n"
    "The `cursor` appears in brackets before each browsing display: `[{cursor}]`.\n"
    "Cite information from the tool using the following format:\n"
    "`【{cursor}†L{line_start}(-L{line_end})?】`, for example: `【6†L9-L11】` or `【8†L3】`.\n"
    "Do not quote more than 10 words directly from the tool output.\n"
    "sources=web (default: web)"
)

_PYTHON_DESCRIPTION = (
    "Use this tool to execute Python code in your chain of thought. The code will not be shown to the user. "
    "This tool should be used for internal reasoning, but not for code that is intended to be visible to the "
    "user (e.g. when creating plots, tables, or files).\n\n"
    "When you send a message containing Python code to python, it will be executed in a stateful Jupyter "
    "notebook environment. python will respond with the output of the execution or time out after 120.0 "
    "seconds. The drive at '/mnt/data' can be used to save and persist user files. Internet access for this "
    "session is UNKNOWN. Depends on the cluster."
)


def _browser_tools() -> list[ToolDescription]:
    return [
        ToolDescription(
            "search",
            "Searches for information related to `query` and displays `topn` results.",
            {
                "type": "object",
                "properties": {
                    "query": {"type": "string"},
                    "topn": {"type": "number", "default": 10},
                    "source": {"type": "string"},
                },
                "required": ["query"],
            },
        ),
        ToolDescription(
            "open",
            "Opens the link `id` from the page indicated by `cursor` starting at line number `loc`, showing "
            "`num_lines` lines.\n"
            "Valid link ids are displayed with the formatting: `【{id}†.*】`.\n"
            "If `cursor` is not provided, the most recent page is implied.\n"
            "If `id` is a string, it is treated as a fully qualified URL associated with `source`.\n"
            "If `loc` is not provided, the viewport will be positioned at the beginning of the document or "
            "centered on the most relevant passage, if available.\n"
            "Use this function without `id` to scroll to a new location of an opened page.",
            {
                "type": "object",
                "properties": {
                    "id": {"type": ["number", "string"], "default": -1},
                    "cursor": {"type": "number", "default": -1},
                    "loc": {"type": "number", "default": -1},
                    "num_lines": {"type": "number", "default": -1},
                    "view_source": {"type": "boolean", "default": False},
                    "source": {"type": "string"},
                },
            },
        ),
        ToolDescription(
            "find",
            "Finds exact matches of `pattern` in the current page, or the page given by `cursor`.",
            {
                "type": "object",
                "properties": {"pattern": {"type": "string"}, "cursor": {"type": "number", "default": -1}},
                "required": ["pattern"],
            },
        ),
    ]
