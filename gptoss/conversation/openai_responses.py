"""Responses API items <-> Harmony messages.

Input: ``input`` (a string, or a list of items) becomes the conversation to complete. ``instructions``
and leading ``system``/``developer`` messages become the Harmony developer instructions; ``user`` and
``assistant`` messages become user and assistant (final, or commentary for a ``phase: commentary``
preamble) messages; ``function_call`` items become assistant commentary calls ``to=functions.NAME``;
``function_call_output`` items become tool messages from that function (the name is found through the
``call_id`` of an earlier ``function_call``, earlier responses included); ``reasoning`` items become
analysis messages; ``code_interpreter_call`` items become a ``to=python`` call and its output. With
``previous_response_id`` the stored items of the earlier turns come first; stored built-in tool calls
keep their exact Harmony messages (``_harmony``), search results included.

Output: :class:`TurnItems` follows the Harmony parser of a generated turn and cuts it into output items
(reasoning, message, function_call, web_search_call, code_interpreter_call), announcing each as it
begins, grows and ends, so that one code path serves streamed and non-streamed responses. Items and events here
are plain data; the server dresses them in the ``openai`` SDK's types.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from gptoss.conversation.openai_chat import (
    ConversationError,
    ServerPersona,
    assistant_call,
    developer_message,
    text_of,
    tool_result,
    turn_grammar,
)
from gptoss.conversation.turn import GrowingText, TurnPrompt, new_call_id
from gptoss.harmony import Author, Message, Role, StreamParser, StreamState
from gptoss.harmony.grammar import TurnGrammar
from gptoss.harmony.parser import STOP_TOKENS

MESSAGE_ROLES = ("user", "assistant", "system", "developer")
ITEM_TYPES = (
    "message",
    "function_call",
    "function_call_output",
    "reasoning",
    "code_interpreter_call",
    "web_search_call",
    "mcp_call",
    "mcp_list_tools",
)
# Responses API hosted tool types -> the built-in gpt-oss tool that serves them, and its recipients.
HOSTED_TOOLS = {
    "web_search": "browser",
    "web_search_preview": "browser",
    "web_search_2025_08_26": "browser",
    "web_search_preview_2025_03_11": "browser",
    "code_interpreter": "python",
    "browser_search": "browser",  # the name OpenAI's reference gpt-oss server gives the browser
}
BUILTIN_RECIPIENTS = {"browser": ["browser.search", "browser.open", "browser.find"], "python": ["python"]}
HARMONY_KEY = "_harmony"  # stored output items only: the exact Harmony messages of a built-in tool call


# ---------------------------------------------------------------------------------------------- input
def normalize_input(input: str | list[Any], where: str = "input") -> list[dict[str, Any]]:
    """Validate request input and return it as canonical items (``type`` always set, text parts kept).

    A string is one user message. Raises :class:`ConversationError` naming the offending item."""
    if isinstance(input, str):
        return [{"type": "message", "role": "user", "content": input}]
    if not isinstance(input, list):
        raise ConversationError(f"{where}: expected a string or a list of items", where)
    return [_normalize_item(item, f"{where}[{i}]") for i, item in enumerate(input)]


def _normalize_item(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ConversationError(f"{where}: expected an object (an input item), found {type(item).__name__}", where)
    kind = item.get("type") or ("message" if "role" in item else None)
    if kind == "message":
        role = item.get("role")
        if role not in MESSAGE_ROLES:
            raise ConversationError(
                f"{where}.role: expected user, assistant, system or developer, found {role!r}", f"{where}.role"
            )
        allowed = ("output_text", "text") if role == "assistant" else ("input_text", "text", "output_text")
        content = item.get("content")
        if content is None:
            raise ConversationError(f"{where}.content: required for a message", f"{where}.content")
        text_of(content, f"{where}.content", allowed)  # validates the parts
        out = {"type": "message", "role": role, "content": content}
        if role == "assistant" and item.get("phase") in ("commentary", "final_answer"):
            out["phase"] = item["phase"]
        if isinstance(item.get("id"), str):
            out["id"] = item["id"]
        return out
    if kind == "function_call":
        name, call_id, args = item.get("name"), item.get("call_id"), item.get("arguments", "")
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_-." for c in name):
            raise ConversationError(
                f"{where}.name: expected a function name (letters, digits, '_', '-', '.'), found {name!r}",
                f"{where}.name",
            )
        if not isinstance(call_id, str) or not call_id:
            raise ConversationError(
                f"{where}.call_id: required for a function_call (a non-empty string)", f"{where}.call_id"
            )
        if isinstance(args, (dict, list)):
            args = json.dumps(args)
        if not isinstance(args, str):
            raise ConversationError(f"{where}.arguments: expected a JSON string", f"{where}.arguments")
        out = {"type": "function_call", "call_id": call_id, "name": name, "arguments": args}
        if isinstance(item.get("namespace"), str) and item["namespace"]:  # a function of a namespace tool
            out["namespace"] = item["namespace"]
        if isinstance(item.get("id"), str):
            out["id"] = item["id"]
        return out
    if kind == "function_call_output":
        call_id, output = item.get("call_id"), item.get("output")
        if not isinstance(call_id, str) or not call_id:
            raise ConversationError(
                f"{where}.call_id: required for a function_call_output (the call_id of the function_call it answers)",
                f"{where}.call_id",
            )
        if output is None:
            raise ConversationError(f"{where}.output: required for a function_call_output", f"{where}.output")
        if not isinstance(output, str):
            output = text_of(output, f"{where}.output", ("input_text", "output_text", "text"))
        return {"type": "function_call_output", "call_id": call_id, "output": output}
    if kind == "reasoning":
        text = reasoning_text(item, where)
        out = {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": text}]}
        if isinstance(item.get("id"), str):
            out["id"] = item["id"]
        return out
    if kind == "code_interpreter_call":
        code, outputs = item.get("code") or "", item.get("outputs") or []
        if not isinstance(code, str) or not isinstance(outputs, list):
            raise ConversationError(
                f"{where}: a code_interpreter_call needs 'code' (a string) and 'outputs' (a list)", where
            )
        logs = [o.get("logs") for o in outputs if isinstance(o, dict) and o.get("type") == "logs"]
        return {
            "type": "code_interpreter_call",
            "code": code,
            "outputs": [{"type": "logs", "logs": str(x)} for x in logs if x is not None],
        }
    if kind == "web_search_call":
        # Its results are not part of the item: sent back by hand it adds nothing to the conversation.
        return {"type": "web_search_call", "action": item.get("action") if isinstance(item.get("action"), dict) else {}}
    if kind == "mcp_list_tools":  # what a server offered: nothing for the model to read
        return {"type": "mcp_list_tools"}
    if kind == "mcp_call":  # a call and what it returned: the same two messages as when it ran
        label, name, args = item.get("server_label"), item.get("name"), item.get("arguments", "")
        for key, value in (("server_label", label), ("name", name)):
            if not isinstance(value, str) or not value or not all(c.isalnum() or c in "_-" for c in value):
                raise ConversationError(
                    f"{where}.{key}: expected a name (letters, digits, '_', '-'), found {value!r}", f"{where}.{key}"
                )
        if not isinstance(args, str):
            raise ConversationError(f"{where}.arguments: expected a JSON string", f"{where}.arguments")
        result = item.get("output") if isinstance(item.get("output"), str) else (item.get("error") or "")
        return {"type": "mcp_call", "server_label": label, "name": name, "arguments": args, "output": str(result)}
    if kind == "item_reference":
        raise ConversationError(
            f"{where}: item_reference items are not supported; send the item itself, or continue "
            "a stored response with previous_response_id",
            f"{where}.type",
        )
    if kind is None:
        raise ConversationError(f"{where}: an item needs a 'type' (or a 'role' for a message)", f"{where}.type")
    raise ConversationError(f"{where}.type: expected one of {', '.join(ITEM_TYPES)}, found {kind!r}", f"{where}.type")


def reasoning_text(item: dict[str, Any], where: str) -> str:
    """The text of a reasoning item: its reasoning_text content, else its summary."""
    for key, part_type in (("content", "reasoning_text"), ("summary", "summary_text")):
        parts = item.get(key)
        if parts:
            if not isinstance(parts, list):
                raise ConversationError(f"{where}.{key}: expected a list of {part_type} parts", f"{where}.{key}")
            return text_of(parts, f"{where}.{key}", (part_type, "text"))
    if item.get("encrypted_content"):
        raise ConversationError(
            f"{where}: encrypted reasoning cannot be read here; send its reasoning_text content",
            f"{where}.encrypted_content",
        )
    return ""


def responses_prompt(
    persona: ServerPersona,
    items: list[dict[str, Any]],
    instructions: str | None,
    tools: list[dict] | None,
    effort: str | None,
    *,
    first_new: int = 0,
    builtin_tools: list[str] = (),
    response_format: dict | None = None,
    namespaces: list = (),
) -> TurnPrompt:
    """Canonical items (see :func:`normalize_input`) -> the Harmony conversation to complete.

    ``first_new``: how many leading items came from earlier responses (``previous_response_id``); errors
    in the others name them as ``input[i]``."""
    if not items:
        raise ConversationError("input: the conversation is empty; send at least one message", "input")
    texts: list[str] = [instructions] if instructions else []
    history: list[Message] = []
    call_names: dict[str, str] = {}
    for k, item in enumerate(items):
        where = f"input[{k - first_new}]" if k >= first_new else f"previous response item {k}"
        kind = item["type"]
        if kind == "message":
            role = item["role"]
            if role in ("system", "developer"):
                text = text_of(item["content"], f"{where}.content")
                if history:
                    history.append(Message.from_role_and_content(Role.DEVELOPER, text))
                else:
                    texts.append(text)
            elif role == "user":
                history.append(Message.from_role_and_content(Role.USER, text_of(item["content"], f"{where}.content")))
            else:
                channel = "commentary" if item.get("phase") == "commentary" else "final"
                text = text_of(item["content"], f"{where}.content", ("output_text", "text"))
                history.append(Message.from_role_and_content(Role.ASSISTANT, text).with_channel(channel))
        elif kind == "function_call":
            name = f"{item['namespace']}.{item['name']}" if item.get("namespace") else item["name"]
            call_names[item["call_id"]] = name
            history.append(assistant_call(name, item["arguments"]))
        elif kind == "function_call_output":
            name = call_names.get(item["call_id"])
            if name is None:
                raise ConversationError(
                    f"{where}.call_id: {item['call_id']!r} matches no earlier function_call item "
                    "(in this input or the responses it continues)",
                    f"{where}.call_id",
                )
            history.append(tool_result(name, item["output"]))
        elif kind == "reasoning":
            text = reasoning_text(item, where)
            if text:
                history.append(Message.from_role_and_content(Role.ASSISTANT, text).with_channel("analysis"))
        elif HARMONY_KEY in item:
            history += [Message.from_dict(m) for m in item[HARMONY_KEY]]
        elif kind == "mcp_call":
            recipient = f"{item['server_label']}.{item['name']}"
            history.append(
                Message.from_role_and_content(Role.ASSISTANT, item["arguments"])
                .with_channel("commentary")
                .with_recipient(recipient)
                .with_content_type("json")
            )
            history.append(
                Message.from_author_and_content(Author(Role.TOOL, recipient), item["output"])
                .with_recipient("assistant")
                .with_channel("commentary")
            )
        elif kind == "code_interpreter_call":
            history.append(
                Message.from_role_and_content(Role.ASSISTANT, item["code"])
                .with_channel("analysis")
                .with_recipient("python")
                .with_content_type("code")
            )
            logs = "\n".join(o["logs"] for o in item["outputs"])
            history.append(
                Message.from_author_and_content(Author(Role.TOOL, "python"), logs)
                .with_recipient("assistant")
                .with_channel("analysis")
            )
    head = [persona.system_message(effort, builtin_tools=list(builtin_tools), namespaces=list(namespaces))]
    dev = developer_message(texts, tools, response_format)
    if dev is not None:
        head.append(dev)
    return TurnPrompt(head + history, shared=len(head))


def split_tools(tools: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Responses ``tools`` -> (function tools as name/description/parameters/strict, built-in tools wanted:
    ``browser`` for web_search, ``python`` for code_interpreter). The function tools of a ``namespace``
    tool become functions named ``NAMESPACE.NAME``. Other tool types are a 400."""
    functions: list[dict[str, Any]] = []
    builtins: list[str] = []
    keys = ("name", "description", "parameters", "strict")
    for i, tool in enumerate(tools):
        kind = tool.get("type")
        if kind == "function":
            if not tool.get("name"):
                raise ConversationError(f"tools[{i}].name: required for a function tool", f"tools[{i}].name")
            functions.append({k: tool[k] for k in keys if tool.get(k) is not None} | {"_where": f"tools[{i}]"})
        elif kind == "namespace":
            space, inner = tool.get("name"), tool.get("tools")
            if not isinstance(space, str) or not space or not isinstance(inner, list):
                raise ConversationError(
                    f"tools[{i}]: a namespace tool needs a 'name' and a list of 'tools'", f"tools[{i}]"
                )
            for j, fn in enumerate(inner):
                if not isinstance(fn, dict) or fn.get("type") != "function" or not fn.get("name"):
                    found = fn.get("type") if isinstance(fn, dict) else type(fn).__name__
                    raise ConversationError(
                        f"tools[{i}].tools[{j}]: only named function tools are supported in a "
                        f"namespace, found {found!r}",
                        f"tools[{i}].tools[{j}]",
                    )
                functions.append(
                    {k: fn[k] for k in keys if fn.get(k) is not None}
                    | {"name": f"{space}.{fn['name']}", "_where": f"tools[{i}].tools[{j}]"}
                )
        elif kind in HOSTED_TOOLS:
            if HOSTED_TOOLS[kind] not in builtins:
                builtins.append(HOSTED_TOOLS[kind])
        elif kind == "mcp":
            continue  # see mcp_requests
        else:
            raise ConversationError(
                f"tools[{i}].type: {kind!r} tools are not supported; expected function, "
                "namespace, web_search (web_search_preview, browser_search) or code_interpreter",
                f"tools[{i}].type",
            )
    return functions, builtins


@dataclass
class McpRequest:
    """One ``{"type": "mcp", ...}`` tool of a request."""

    index: int
    server_label: str
    server_url: str | None
    allowed_tools: list[str] | None  # None: all the server's tools


def mcp_requests(tools: list[dict[str, Any]]) -> list[McpRequest]:
    """The ``mcp`` tools among Responses ``tools``, checked: a ``server_label``, approvals ``never`` (no
    approval flow here), ``allowed_tools`` a list of names (or ``{"tool_names": [...]}``)."""
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "mcp":
            continue
        label = tool.get("server_label")
        if not isinstance(label, str) or not label:
            raise ConversationError(f"tools[{i}].server_label: required for an mcp tool", f"tools[{i}].server_label")
        if any(r.server_label == label for r in out):
            raise ConversationError(f"tools[{i}].server_label: {label!r} is declared twice", f"tools[{i}].server_label")
        approval = tool.get("require_approval", "always")
        never = approval == "never" or (isinstance(approval, dict) and set(approval) == {"never"})
        if not never:
            raise ConversationError(
                f'tools[{i}].require_approval: only "never" is supported (this server has no '
                f"approval flow), found {approval!r}",
                f"tools[{i}].require_approval",
            )
        allowed = tool.get("allowed_tools")
        if isinstance(allowed, dict):
            allowed = allowed.get("tool_names")
        if allowed is not None and (not isinstance(allowed, list) or not all(isinstance(a, str) for a in allowed)):
            raise ConversationError(
                f"tools[{i}].allowed_tools: expected a list of tool names", f"tools[{i}].allowed_tools"
            )
        for key in ("connector_id", "authorization", "headers"):
            if tool.get(key):
                raise ConversationError(
                    f"tools[{i}].{key}: not supported; MCP servers are declared by the operator "
                    "(gptoss serve --mcp NAME=URL)",
                    f"tools[{i}].{key}",
                )
        url = tool.get("server_url")
        out.append(McpRequest(i, label, url if isinstance(url, str) else None, allowed))
    return out


def namespaces(tools: list[dict[str, Any]]) -> set[str]:
    """The names of the ``namespace`` tools among Responses ``tools``."""
    return {t["name"] for t in tools if t.get("type") == "namespace" and isinstance(t.get("name"), str)}


def responses_grammar(
    persona: ServerPersona,
    functions: dict[str, dict | None],
    builtins: list[str],
    tool_choice: Any,
    response_format: dict | None,
    *,
    first_turn: bool = True,
    namespace_tools: dict[str, dict | None] | None = None,
) -> TurnGrammar:
    """The grammar of one turn. ``builtins``: the built-in tools the model may call now. A forcing
    tool_choice (required, a function, a hosted tool) holds for the first turn only: once a built-in
    call has run, the model is free to answer."""
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function" and tool_choice.get("namespace"):
        tool_choice = tool_choice | {"name": f"{tool_choice['namespace']}.{tool_choice.get('name')}"}  # its functions
    hosted = None
    if isinstance(tool_choice, dict) and tool_choice.get("type") not in ("function", None):
        hosted = HOSTED_TOOLS.get(tool_choice.get("type"))
        if hosted is None:
            raise ConversationError(
                f"tool_choice: {tool_choice.get('type')!r} is not supported; expected auto, none, "
                'required, {"type": "function", "name": ...} or a built-in tool type',
                "tool_choice",
            )
        if hosted not in builtins and first_turn:
            raise ConversationError(f"tool_choice: {tool_choice['type']!r} is not among the tools", "tool_choice")
    namespace_tools = namespace_tools or {}
    if not builtins and not namespace_tools and hosted is None:
        return turn_grammar(
            persona, functions, tool_choice if first_turn or tool_choice == "none" else None, response_format
        )
    base = turn_grammar(persona, {}, None, response_format)  # validates response_format
    recipients = [r for b in builtins for r in BUILTIN_RECIPIENTS[b]]
    if tool_choice == "none":
        return TurnGrammar(
            functions=functions,
            tool_choice="none",
            final_schema=base.final_schema,
            reasoning_max_tokens=persona.reasoning_max_tokens,
        )
    choice = "auto"
    if first_turn and hosted is not None:
        functions, recipients, choice = {}, BUILTIN_RECIPIENTS[hosted], "required"
    elif first_turn and tool_choice == "required":
        choice = "required"
    elif first_turn and isinstance(tool_choice, dict):
        choice = turn_grammar(persona, functions, tool_choice, None).tool_choice  # a named function
    if first_turn and hosted is not None:
        namespace_tools = {}
    if choice == "required" and not functions and not recipients and not namespace_tools:
        raise ConversationError("tool_choice: 'required' needs at least one tool", "tool_choice")
    if choice == "auto" and not functions and not recipients and not namespace_tools:
        choice = "none"
    return TurnGrammar(
        functions=functions,
        tool_choice=choice,
        builtin_tools=recipients,
        final_schema=base.final_schema,
        reasoning_max_tokens=persona.reasoning_max_tokens,
        namespace_tools=namespace_tools,
    )


def text_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    """``text.format`` of a Responses request as a Chat Completions ``response_format``."""
    fmt = (text or {}).get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise ConversationError('text.format: expected an object such as {"type": "json_schema", ...}', "text.format")
    if fmt.get("type") == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {
                "schema": fmt.get("schema"),
                "name": fmt.get("name"),
                "description": fmt.get("description"),
                "strict": fmt.get("strict"),
            },
        }
    return fmt


# ---------------------------------------------------------------------------------------------- output
@dataclass
class OutputItem:
    """One output item of a turn as it is generated.

    kind: ``reasoning`` (an analysis message), ``message`` (a final answer, or a commentary preamble:
    ``phase``), ``function_call`` (``name``, ``call_id``; ``text`` holds the arguments),
    ``code_interpreter_call`` (``text`` holds the code) or ``web_search_call`` (``name`` is the
    recipient, browser.search / open / find; ``text`` the JSON arguments). Built-in calls gain their
    ``status``, ``action`` or ``outputs``, and ``harmony`` (the call and the tool's answer) once run."""

    kind: str
    id: str
    index: int
    name: str | None = None
    call_id: str | None = None
    phase: str | None = None
    done: bool = False
    complete: bool = False  # done, and closed by its stop token (not cut off by the end of generation)
    message: Message | None = None  # the parsed Harmony message, once done
    status: str | None = None  # built-in calls, once run: completed | failed | incomplete
    action: dict[str, Any] | None = None  # web_search_call
    outputs: list[dict[str, Any]] | None = None  # code_interpreter_call
    harmony: list[Message] = field(default_factory=list)  # built-in calls: the call and the tool's answer
    output: str | None = None  # mcp_call, once run: the result the model read
    error: str | None = None  # mcp_call, once run: why it failed
    annotations: list[dict[str, Any]] = field(default_factory=list)  # messages: url_citation of browser citations
    _text: GrowingText = field(default_factory=GrowingText, repr=False)  # grows linearly as the turn streams

    @property
    def text(self) -> str:
        return str(self._text)

    @text.setter
    def text(self, value: str) -> None:
        self._text = GrowingText(value)

    def append(self, piece: str) -> None:
        self._text.append(piece)

    @property
    def builtin(self) -> bool:
        return self.kind in ("code_interpreter_call", "web_search_call", "mcp_call")


@dataclass
class ItemEvent:
    """``added`` (an item begins), ``delta`` (``text`` was appended to it), ``done`` (it is complete)."""

    kind: str
    item: OutputItem
    text: str = ""


def _item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


@dataclass
class TurnItems:
    """Cuts a generated turn into output items, one per Harmony message, by watching its parser.

    Call :meth:`update` after every token fed to the parser (and after ``process_eos``)."""

    items: list[OutputItem] = field(default_factory=list)
    mcp_labels: set[str] = field(default_factory=set)  # namespaces whose calls are mcp_call items
    _done: int = 0  # parser messages already turned into finished items
    _open: OutputItem | None = None  # the item of the message now streaming (ordinal _done)

    def update(self, parser: StreamParser) -> list[ItemEvent]:
        events: list[ItemEvent] = []
        finished = parser.messages
        while self._done < len(finished):
            msg = finished[self._done]
            item, self._open = self._open, None
            if item is None:
                if not msg.text:  # a header cut short, never opened: nothing to show
                    self._done += 1
                    continue
                item = self._new(msg.channel, msg.recipient)
                events.append(ItemEvent("added", item))
            text, streamed = msg.text, item.text
            tail = text[len(streamed) :] if text.startswith(streamed) else ""
            if tail:
                item.append(tail)
                events.append(ItemEvent("delta", item, tail))
            end = parser.spans[self._done].end
            item.done, item.message = True, msg
            item.complete = end > 0 and parser.tokens[end - 1] in STOP_TOKENS
            events.append(ItemEvent("done", item))
            self._done += 1
        if parser.state is StreamState.CONTENT:
            if self._open is None:
                self._open = self._new(parser.current_channel, parser.current_recipient)
                events.append(ItemEvent("added", self._open))
            delta = parser.last_content_delta
            if delta:
                self._open.append(delta)
                events.append(ItemEvent("delta", self._open, delta))
        return events

    def _new(self, channel: str | None, recipient: str | None) -> OutputItem:
        index = len(self.items)
        if recipient in ("python", "python.exec"):
            item = OutputItem("code_interpreter_call", _item_id("ci"), index, name=recipient)
        elif recipient and recipient.startswith("browser."):
            item = OutputItem("web_search_call", _item_id("ws"), index, name=recipient)
        elif recipient and recipient.split(".", 1)[0] in self.mcp_labels:
            item = OutputItem("mcp_call", _item_id("mcp"), index, name=recipient)
        elif recipient and recipient != "assistant":
            name = recipient.removeprefix("functions.")
            item = OutputItem("function_call", _item_id("fc"), index, name=name, call_id=new_call_id())
        elif channel == "analysis":
            item = OutputItem("reasoning", _item_id("rs"), index)
        else:
            item = OutputItem(
                "message", _item_id("msg"), index, phase="commentary" if channel == "commentary" else "final_answer"
            )
        self.items.append(item)
        return item
