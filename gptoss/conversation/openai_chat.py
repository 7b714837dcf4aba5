"""OpenAI-API conversations <-> Harmony messages.

Chat Completions: ``system`` and ``developer`` messages become the Harmony developer instructions (the
Harmony system message stays the server's: identity, dates, reasoning effort, channels); assistant
messages become analysis (``reasoning_content``), final (``content``) and commentary tool calls
(``tool_calls``); ``tool`` messages become messages from ``functions.NAME``. Responses API items map
the same way. Inputs arrive validated as plain dicts; a conversation that cannot be mapped raises
:class:`~gptoss.errors.GptossError` naming the offending message.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from typing import Any

from gptoss.conversation.turn import TurnPrompt
from gptoss.errors import GptossError
from gptoss.harmony import (
    DEFAULT_KNOWLEDGE_CUTOFF,
    Author,
    DeveloperContent,
    Message,
    ReasoningEffort,
    Role,
    SystemContent,
    ToolDescription,
)
from gptoss.harmony.grammar import TurnGrammar


class ConversationError(GptossError):
    """A request whose messages cannot form a conversation. ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass
class ServerPersona:
    """What the server puts in every Harmony system message."""

    knowledge_cutoff: str = DEFAULT_KNOWLEDGE_CUTOFF
    default_effort: str = "medium"
    model_identity: str | None = None
    reasoning_max_tokens: int | None = None

    def system_message(self, effort: str | None, builtin_tools: list[str] = (), namespaces: list = ()) -> Message:
        """``namespaces``: more tool namespaces (ToolNamespaceConfig) declared beside the built-in ones (the
        tools of MCP servers)."""
        content = (
            SystemContent.new()
            .with_reasoning_effort(ReasoningEffort.parse(effort or self.default_effort))
            .with_knowledge_cutoff(self.knowledge_cutoff)
            .with_conversation_start_date(datetime.date.today().isoformat())
        )
        if self.model_identity:
            content = content.with_model_identity(self.model_identity)
        if "browser" in builtin_tools:
            content = content.with_browser_tool()
        if "python" in builtin_tools:
            content = content.with_python_tool()
        for ns in namespaces:
            content = content.with_tools(ns)
        return Message.from_role_and_content(Role.SYSTEM, content)


def text_of(content: Any, where: str, allowed: tuple[str, ...] = ("text", "input_text", "output_text")) -> str:
    """The text of an API message content: a string, or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in allowed and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif kind in ("image_url", "input_image", "input_audio", "input_file", "file"):
                raise ConversationError(f"{where}[{i}]: {kind} content is not supported by gpt-oss (text only)", where)
            else:
                raise ConversationError(
                    f"{where}[{i}]: expected a text part ({' or '.join(allowed)}), found {kind!r}", where
                )
        return "".join(parts)
    raise ConversationError(f"{where}: expected a string or a list of text parts", where)


def function_tools(tools: list[dict] | None, where: str = "tools") -> dict[str, dict | None]:
    """Validated function tools: name -> JSON Schema of the arguments (None when it takes none).

    Errors name ``tools[i].function.FIELD``, or ``PATH.FIELD`` for a tool that carries its request path
    under ``"_where"`` (Responses tools, namespaces)."""
    from gptoss.engine.guided import json_schema_error  # schema validity is llguidance's call

    out: dict[str, dict | None] = {}
    for i, tool in enumerate(tools or []):
        fn = tool.get("function") if tool.get("type") == "function" and "function" in tool else tool
        at = fn.get("_where") or f"{where}[{i}].function"
        name = fn.get("name")
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_-." for c in name):
            raise ConversationError(
                f"{at}.name: expected letters, digits, '_', '-' or '.', found {name!r}", f"{at}.name"
            )
        if name in out:
            raise ConversationError(f"{at}: function {name!r} is declared twice", f"{at}.name")
        params = fn.get("parameters")
        if params is not None:
            if not isinstance(params, dict):
                raise ConversationError(f"{at}.parameters: expected a JSON Schema object", f"{at}.parameters")
            error = json_schema_error(params) if params else None
            if error:
                raise ConversationError(f"{at}.parameters: invalid JSON Schema ({error})", f"{at}.parameters")
        if fn.get("strict") is True:
            error = strict_schema_error(params or {})
            if error:
                raise ConversationError(
                    f"{at}.parameters: invalid schema for strict function {name!r}: {error}", f"{at}.parameters"
                )
        out[name] = params or None
    return out


def strict_schema_error(schema: dict, at: str = "") -> str | None:
    """What OpenAI's strict mode (Structured Outputs) rejects in ``schema``, or None: the root must be an
    object, and every object must set ``additionalProperties: false`` and list each of its properties in
    ``required``."""
    where = f"at {at or '(root)'}"
    if not at and (not isinstance(schema, dict) or schema.get("type") != "object"):
        return f"{where}, the schema must be an object schema ('type': 'object')"
    if not isinstance(schema, dict):
        return None
    types = schema.get("type") if isinstance(schema.get("type"), list) else [schema.get("type")]
    if "object" in types or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return f"{where}, 'additionalProperties' is required to be supplied and to be false"
        props = schema.get("properties") or {}
        required = schema.get("required") or []
        missing = [k for k in props if k not in required]
        if missing:
            return (
                f"{where}, 'required' is required to be supplied and to be an array including every key in "
                f"properties; missing {', '.join(repr(k) for k in missing)}"
            )
    children: list[tuple[str, Any]] = []
    for key in ("properties", "$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            children += [(f"{at}.{key}.{k}" if at else f"{key}.{k}", v) for k, v in schema[key].items()]
    for key in ("anyOf", "allOf", "oneOf", "prefixItems"):
        if isinstance(schema.get(key), list):
            children += [(f"{at}.{key}[{j}]" if at else f"{key}[{j}]", v) for j, v in enumerate(schema[key])]
    if isinstance(schema.get("items"), dict):
        children.append((f"{at}.items" if at else "items", schema["items"]))
    for path, child in children:
        error = strict_schema_error(child, path)
        if error:
            return error
    return None


def tool_descriptions(tools: list[dict] | None) -> list[ToolDescription]:
    descs = []
    for tool in tools or []:
        fn = tool.get("function") if tool.get("type") == "function" and "function" in tool else tool
        params = fn.get("parameters") or None
        descs.append(ToolDescription.new(fn["name"], fn.get("description") or "", params))
    return descs


def developer_message(
    instructions: list[str], tools: list[dict] | None, response_format: dict | None = None
) -> Message | None:
    """Instructions, function tools, and a json_schema response format (told to the model under
    ``# Response Formats``, as gpt-oss was trained; the grammar then enforces it)."""
    content = DeveloperContent.new()
    text = "\n\n".join(t for t in instructions if t)
    if text:
        content = content.with_instructions(text)
    descs = tool_descriptions(tools)
    if descs:
        content = content.with_function_tools(descs)
    spec = (response_format or {}).get("json_schema") or response_format or {}
    if (response_format or {}).get("type") == "json_schema" and isinstance(spec.get("schema"), dict):
        content = content.with_response_format(
            spec.get("name") or "response", spec["schema"], spec.get("description") or ""
        )
    if content == DeveloperContent.new():
        return None
    return Message.from_role_and_content(Role.DEVELOPER, content)


def assistant_call(name: str, arguments: str) -> Message:
    return (
        Message.from_role_and_content(Role.ASSISTANT, arguments)
        .with_channel("commentary")
        .with_recipient(f"functions.{name}")
        .with_content_type("<|constrain|>json")
    )


def tool_result(name: str, output: str) -> Message:
    return (
        Message.from_author_and_content(Author.new(Role.TOOL, f"functions.{name}"), output)
        .with_channel("commentary")
        .with_recipient("assistant")
    )


def chat_prompt(
    persona: ServerPersona,
    messages: list[dict],
    tools: list[dict] | None,
    effort: str | None,
    response_format: dict | None = None,
) -> TurnPrompt:
    """Chat Completions messages -> the Harmony conversation to complete."""
    instructions: list[str] = []
    history: list[Message] = []
    call_names: dict[str, str] = {}
    for i, m in enumerate(messages):
        role, where = m.get("role"), f"messages[{i}]"
        if role in ("system", "developer"):
            if history:
                # A system message mid-conversation: keep it where it is, as developer text.
                history.append(
                    Message.from_role_and_content(Role.DEVELOPER, text_of(m.get("content"), f"{where}.content"))
                )
            else:
                instructions.append(text_of(m.get("content"), f"{where}.content"))
        elif role == "user":
            history.append(Message.from_role_and_content(Role.USER, text_of(m.get("content"), f"{where}.content")))
        elif role == "assistant":
            reasoning = m.get("reasoning_content") or m.get("reasoning")
            if reasoning:
                history.append(Message.from_role_and_content(Role.ASSISTANT, str(reasoning)).with_channel("analysis"))
            calls = m.get("tool_calls") or []
            for j, call in enumerate(calls):
                fn = call.get("function") or {}
                name, args = fn.get("name"), fn.get("arguments", "")
                if not isinstance(name, str) or not name:
                    raise ConversationError(f"{where}.tool_calls[{j}].function.name: missing", f"{where}.tool_calls")
                if call.get("id"):
                    call_names[call["id"]] = name
                history.append(assistant_call(name, args if isinstance(args, str) else json.dumps(args)))
            text = text_of(m.get("content"), f"{where}.content")
            if text or not calls:
                history.append(Message.from_role_and_content(Role.ASSISTANT, text).with_channel("final"))
        elif role == "tool":
            call_id = m.get("tool_call_id")
            name = call_names.get(call_id) or m.get("name")
            if not name:
                raise ConversationError(
                    f"{where}.tool_call_id: {call_id!r} matches no earlier assistant tool call", f"{where}.tool_call_id"
                )
            history.append(tool_result(name, text_of(m.get("content"), f"{where}.content")))
        else:
            raise ConversationError(
                f"{where}.role: expected system, developer, user, assistant or tool, found {role!r}", f"{where}.role"
            )
    head = [persona.system_message(effort)]
    dev = developer_message(instructions, tools, response_format)
    if dev is not None:
        head.append(dev)
    return TurnPrompt(head + history, shared=len(head))


def turn_grammar(
    persona: ServerPersona, functions: dict[str, dict | None], tool_choice: Any, response_format: dict | None
) -> TurnGrammar:
    """The grammar of the next turn from an API request's tool_choice and response_format."""
    choice = "auto" if functions else "none"
    if tool_choice is not None:
        if isinstance(tool_choice, str):
            if tool_choice not in ("auto", "none", "required"):
                raise ConversationError(
                    f"tool_choice: expected auto, none, required or a function, found {tool_choice!r}", "tool_choice"
                )
            choice = tool_choice
        elif isinstance(tool_choice, dict):
            fn = tool_choice.get("function") if isinstance(tool_choice.get("function"), dict) else tool_choice
            name = fn.get("name")
            if name not in functions:
                raise ConversationError(f"tool_choice: function {name!r} is not among the tools", "tool_choice")
            choice = name
        if choice in ("required",) and not functions:
            raise ConversationError("tool_choice: 'required' needs at least one tool", "tool_choice")
        if choice == "auto" and not functions:
            choice = "none"
    final_schema = None
    if response_format:
        kind = response_format.get("type")
        if kind == "json_object":
            final_schema = {"type": "object"}
        elif kind == "json_schema":
            spec = response_format.get("json_schema") or response_format
            schema = spec.get("schema")
            if not isinstance(schema, dict):
                raise ConversationError(
                    "response_format.json_schema.schema: expected a JSON Schema object", "response_format"
                )
            strict_error = strict_schema_error(schema) if spec.get("strict") is True else None
            if strict_error:
                raise ConversationError(
                    f"response_format.json_schema.schema: invalid schema for strict response "
                    f"format {spec.get('name') or 'response'!r}: {strict_error}",
                    "response_format",
                )
            from gptoss.engine.guided import json_schema_error

            error = json_schema_error(schema)
            if error:
                raise ConversationError(
                    f"response_format.json_schema.schema: invalid JSON Schema ({error})", "response_format"
                )
            final_schema = schema
        elif kind not in ("text", None):
            raise ConversationError(
                f"response_format.type: expected text, json_object or json_schema, found {kind!r}", "response_format"
            )
    return TurnGrammar(
        functions=functions,
        tool_choice=choice,
        final_schema=final_schema,
        reasoning_max_tokens=persona.reasoning_max_tokens,
    )
