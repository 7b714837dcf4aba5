"""Grammars (llguidance's Lark dialect) for what an assistant turn may contain.

The completion starts right after the prompt's ``<|start|>assistant``. A turn is any number of
analysis messages (and, when tools exist and no response format holds the answer, commentary preambles),
each closed by ``<|end|><|start|>assistant``,
followed by exactly one ending: a final answer closed by ``<|return|>``, or a tool call closed by
``<|call|>``. Headers can only name valid channels and known recipients; a function call's arguments
follow that function's JSON Schema; a final answer may be held to a response format's schema.
Pure text: this module builds strings and imports no torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

# How a built-in tool is addressed, as the model emits it: (channel, content type), e.g.
# `<|channel|>analysis to=browser.search code<|message|>{"query": ...}<|call|>`.
BUILTIN_TOOL_HEADERS = {
    "python": ("analysis", "code"),
    "browser.search": ("analysis", "code"),
    "browser.open": ("analysis", "code"),
    "browser.find": ("analysis", "code"),
}

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass
class TurnGrammar:
    """What the next assistant turn may do.

    ``functions``: name -> JSON Schema of its arguments (None: any JSON object).
    ``tool_choice``: "auto", "none", "required", or a function name.
    ``builtin_tools``: recipients of built-in tools (keys of BUILTIN_TOOL_HEADERS) the model may call.
    ``final_schema``: JSON Schema the final answer must follow (response_format), or None for free text.
    ``reasoning_max_tokens``: a reasoning budget. When set, the turn holds at most one analysis message
    (or preamble) before its ending, of at most this many tokens; when None, reasoning is unbounded.
    """

    functions: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    tool_choice: str = "auto"
    builtin_tools: list[str] = field(default_factory=list)
    final_schema: dict[str, Any] | None = None
    reasoning_max_tokens: int | None = None
    # Tools of other namespaces (an MCP server's): recipient ``NS.TOOL`` -> JSON Schema of its arguments
    # (None: any JSON object), called on the commentary channel like functions.
    namespace_tools: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    def lark(self) -> str:
        calls = self._calls()
        forced = self.tool_choice not in ("auto", "none")
        endings = list(calls) if forced else (["final"] + (calls if self.tool_choice == "auto" else []))
        if not endings:
            raise ValueError("tool_choice requires a tool call but no tools are available")
        # Preambles are text for the user. A response format constrains all the text a client reads as the
        # answer (Chat Completions' content; every output_text the SDKs' parse() helpers read), so with one
        # the model reasons, then answers in the format or calls a tool, and writes no preamble.
        has_tools = bool(self.functions or self.builtin_tools or self.namespace_tools)
        pre = ["analysis"] + (["preamble"] if has_tools and self.final_schema is None else [])
        budget = f"[max_tokens={int(self.reasoning_max_tokens)}]" if self.reasoning_max_tokens else ""
        lines = [
            "%llguidance {}",
            f"start: ({' | '.join(pre)}){'?' if self.reasoning_max_tokens else '*'} ending",
            f"ending: {' | '.join(endings)}",
            'analysis: <|channel|> "analysis" <|message|> budgeted_text <|end|> <|start|> "assistant"',
            'preamble: <|channel|> "commentary" <|message|> budgeted_text <|end|> <|start|> "assistant"',
            f"budgeted_text{budget}: TEXT",
            "TEXT: /(.|\\n)*/",
        ]
        if "final" in endings:
            body = f"%json {_dump(self.final_schema)}" if self.final_schema is not None else "TEXT"
            lines.append(f'final: <|channel|> "final" <|message|> {body} <|return|>')
        lines += self._call_rules()
        return "\n".join(lines) + "\n"

    def _calls(self) -> list[str]:
        names = list(self.functions)
        if self.tool_choice not in ("auto", "none", "required"):
            if self.tool_choice not in self.functions:
                raise ValueError(f"tool_choice names function {self.tool_choice!r}, which is not among the tools")
            names = [self.tool_choice]
            return [_rule_name("fn", n) for n in names]
        return (
            [_rule_name("fn", n) for n in names]
            + [_rule_name("bt", n) for n in self.builtin_tools]
            + [_rule_name("ns", n) for n in self.namespace_tools]
        )

    def _call_rules(self) -> list[str]:
        rules = []
        for name, schema in self.functions.items():
            if not _NAME.match(name):
                raise ValueError(f"function name {name!r} may hold only letters, digits, '_', '.' and '-'")
            args = schema if schema else {"type": "object"}
            rules.append(
                f'{_rule_name("fn", name)}: <|channel|> "commentary to=functions.{name} " <|constrain|> "json" '
                f"<|message|> %json {_dump(args)} <|call|>"
            )
        for recipient, schema in self.namespace_tools.items():
            if not _NAME.match(recipient):
                raise ValueError(f"tool name {recipient!r} may hold only letters, digits, '_', '.' and '-'")
            rules.append(
                f'{_rule_name("ns", recipient)}: <|channel|> "commentary to={recipient} " <|constrain|> "json" '
                f"<|message|> %json {_dump(schema or {'type': 'object'})} <|call|>"
            )
        for recipient in self.builtin_tools:
            channel, ctype = BUILTIN_TOOL_HEADERS[recipient]
            body = '%json {"type": "object"}' if recipient.startswith("browser.") else "TEXT"
            rules.append(
                f"{_rule_name('bt', recipient)}: "
                f'<|channel|> "{channel} to={recipient} {ctype}" <|message|> {body} <|call|>'
            )
        return rules


def _rule_name(prefix: str, name: str) -> str:
    return f"{prefix}_" + re.sub(r"[^a-z0-9]", lambda m: f"_{ord(m.group()):x}_", name)


# Bounds a generated number keeps when its schema sets none, so that any client can read it: integers fit a
# signed 64-bit integer (llguidance works in doubles, so the bound is the largest double below 2**63), and
# numbers stay within +-1e18 (the widest range llguidance's number ranges support; far inside a double's).
INTEGER_BOUND = 2**63 - 1024
NUMBER_BOUND = 10**18
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SUBSCHEMAS = ("items", "additionalProperties", "not", "contains", "if", "then", "else")


def closed_schema(schema: Any) -> Any:
    """The schema the grammar enforces: a copy of ``schema`` in which an object that declares
    ``properties`` and says nothing of ``additionalProperties`` takes no other keys (a client parses the
    declared ones; so do vLLM's and xgrammar's strict modes), and integers and numbers without bounds get
    :data:`INTEGER_BOUND` / :data:`NUMBER_BOUND` (bounds beyond them are narrowed to them)."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [closed_schema(s) for s in out[key]]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {k: closed_schema(s) for k, s in out[key].items()}
    for key in _SUBSCHEMAS:
        if isinstance(out.get(key), (dict, list)):
            out[key] = [closed_schema(s) for s in out[key]] if isinstance(out[key], list) else closed_schema(out[key])
    if ("properties" in out or "patternProperties" in out) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    types = out.get("type")
    types = set(types) if isinstance(types, list) else {types}
    bound = NUMBER_BOUND if "number" in types else INTEGER_BOUND if "integer" in types else None
    if bound is not None:
        for key, limit, pick in (("minimum", -bound, max), ("maximum", bound, min)):
            value = out.get(key)
            out[key] = limit if not isinstance(value, (int, float)) or isinstance(value, bool) else pick(value, limit)
    return out


def _dump(schema: dict[str, Any]) -> str:
    # Compact JSON (no free whitespace) keeps arguments short and parseable.
    schema = closed_schema(schema)
    guidance = dict(schema.get("x-guidance") or {})
    guidance.setdefault("whitespace_flexible", False)
    guidance.setdefault("lenient", True)
    schema["x-guidance"] = guidance
    return json.dumps(schema)
