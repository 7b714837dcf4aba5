"""Grammars (llguidance's Lark dialect) for what an assistant turn may contain.

The completion starts right after the prompt's ``<|start|>assistant``. A turn is any number of
analysis messages (and, when tools exist, commentary preambles), each closed by ``<|end|><|start|>assistant``,
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

    def lark(self) -> str:
        calls = self._calls()
        forced = self.tool_choice not in ("auto", "none")
        endings = list(calls) if forced else (["final"] + (calls if self.tool_choice == "auto" else []))
        if not endings:
            raise ValueError("tool_choice requires a tool call but no tools are available")
        has_tools = bool(self.functions or self.builtin_tools)
        pre = ["analysis"] + (["preamble"] if has_tools else [])
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
        return [_rule_name("fn", n) for n in names] + [_rule_name("bt", n) for n in self.builtin_tools]

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
        for recipient in self.builtin_tools:
            channel, ctype = BUILTIN_TOOL_HEADERS[recipient]
            body = "%json {\"type\": \"object\"}" if recipient.startswith("browser.") else "TEXT"
            rules.append(f'{_rule_name("bt", recipient)}: <|channel|> "{channel} to={recipient} {ctype}" <|message|> {body} <|call|>')
        return rules


def _rule_name(prefix: str, name: str) -> str:
    return f"{prefix}_" + re.sub(r"[^a-z0-9]", lambda m: f"_{ord(m.group()):x}_", name)


def _dump(schema: dict[str, Any]) -> str:
    # Compact JSON (no free whitespace) keeps arguments short and parseable.
    schema = dict(schema)
    guidance = dict(schema.get("x-guidance") or {})
    guidance.setdefault("whitespace_flexible", False)
    guidance.setdefault("lenient", True)
    schema["x-guidance"] = guidance
    return json.dumps(schema)
