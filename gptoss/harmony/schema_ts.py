"""JSON Schema -> the TypeScript-like declarations gpt-oss reads in its ``# Tools`` sections.

The output reproduces openai-harmony's renderer byte for byte, quirks included (a nested
object's description is written both above the property and after its name, ``anyOf`` renders
as ``any``, ``integer`` as ``number``...): the model was trained on exactly this text.
Values embedded in comments (``default: ...``) are written as serde_json writes them.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from gptoss.harmony.system import ToolNamespaceConfig

# Characters Rust's ``char::is_whitespace`` accepts (Unicode White_Space); used for ``str.strip``.
UNICODE_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


def rust_lines(text: str) -> list[str]:
    """Rust's ``str::lines``: split on ``\\n``, drop one trailing ``\\r`` per line, no final empty line."""
    if not text:
        return []
    parts = text.split("\n")
    if parts[-1] == "":
        parts.pop()
    return [p[:-1] if p.endswith("\r") else p for p in parts]


def _json_string(s: str) -> str:
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif code < 0x20:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _float_repr(x: float) -> str:
    """An f64 as serde_json (ryu) prints it: shortest round-trip digits, ``1e20``, ``0.0001``, ``1.0``."""
    if math.isnan(x) or math.isinf(x):
        return "null"  # serde_json writes non-finite floats as null
    if x == 0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    sign = "-" if x < 0 else ""
    # repr gives the shortest round-trip digits, as ryu does; only the layout differs.
    mant, _, exp = repr(abs(x)).partition("e")
    int_part, _, frac_part = mant.partition(".")
    all_digits = int_part + frac_part
    stripped = all_digits.lstrip("0")
    point = len(int_part) - (len(all_digits) - len(stripped)) + int(exp or 0)
    digits = stripped.rstrip("0")
    k = point - len(digits)  # value == int(digits) * 10**k, and 10**(point-1) <= value < 10**point
    if 0 <= k and point <= 16:
        return f"{sign}{digits}{'0' * k}.0"
    if 0 < point <= 16:
        return f"{sign}{digits[:point]}.{digits[point:]}"
    if -5 < point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if len(digits) == 1:
        return f"{sign}{digits}e{point - 1}"
    return f"{sign}{digits[0]}.{digits[1:]}e{point - 1}"


def json_display(value: Any) -> str:
    """Compact JSON as serde_json's ``Value`` displays it (keys in insertion order, no ASCII escaping)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        if -(2**63) <= value < 2**64:
            return str(value)
        return _float_repr(float(value))  # serde_json reads larger integers as f64
    if isinstance(value, float):
        return _float_repr(value)
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{_json_string(str(k))}:{json_display(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(json_display(v) for v in value) + "]"
    return _json_string(str(value))


def _get(schema: Any, key: str) -> Any:
    return schema.get(key) if isinstance(schema, Mapping) else None


def _is_enum(schema: Any) -> bool:
    values = _get(schema, "enum")
    return isinstance(values, list) and len(values) > 0


def _is_nullable(schema: Any) -> bool:
    return _get(schema, "nullable") is True


def _with_nullable(schema: Any, type_str: str) -> str:
    if _is_nullable(schema) and "null" not in type_str:
        return f"{type_str} | null"
    return type_str


def _default_comment(schema: Any, default: Any, quote_enum_strings: bool) -> str:
    """``default: ...`` text. Strings are quoted raw (no escaping) unless the schema is an enum,
    where they are either bare (properties) or JSON-quoted (top-level unions)."""
    if isinstance(default, str):
        if not _is_enum(schema):
            return f'default: "{default}"'
        return f"default: {json_display(default) if quote_enum_strings else default}"
    return f"default: {json_display(default)}"


def json_schema_to_typescript(schema: Any, indent: str = "") -> str:
    """Render a JSON Schema as openai-harmony's TypeScript-like type expression."""
    one_of = _get(schema, "oneOf")
    if isinstance(one_of, list):
        return _render_top_union(one_of, indent)

    ty = _get(schema, "type")
    if isinstance(ty, list):
        names = ["number" if t == "integer" else t for t in ty if isinstance(t, str)]
        if names:
            return " | ".join(names)
    if isinstance(ty, str):
        if ty == "object":
            return _render_object(schema, indent)
        if ty == "string":
            values = _get(schema, "enum")
            if isinstance(values, list):
                names = [f'"{v}"' for v in values if isinstance(v, str)]
                if names:
                    return " | ".join(names)
            return "string"
        if ty in ("number", "integer"):
            return "number"
        if ty == "boolean":
            return "boolean"
        if ty == "array":
            if "items" in schema:
                return f"{json_schema_to_typescript(schema['items'], indent)}[]"
            return "Array<any>"
        return "any"
    return "any"


def _render_top_union(variants: list[Any], indent: str) -> str:
    out: list[str] = []
    for variant in variants:
        out.append(f"\n{indent} | ")
        out.append(_with_nullable(variant, json_schema_to_typescript(variant, indent + "   ")))
        comments: list[str] = []
        desc = _get(variant, "description")
        if isinstance(desc, str):
            comments.append(desc)
        if isinstance(variant, Mapping) and "default" in variant:
            comments.append(_default_comment(variant, variant["default"], quote_enum_strings=True))
        if comments:
            out.append(" // " + " ".join(comments))
    return "".join(out)


def _render_object(schema: Mapping[str, Any], indent: str) -> str:
    out: list[str] = []
    desc = schema.get("description")
    if isinstance(desc, str):
        out.append(f"{indent}// {desc}\n")
    out.append("{\n")
    props = schema.get("properties")
    if isinstance(props, Mapping):
        req = schema.get("required")
        required = {r for r in req if isinstance(r, str)} if isinstance(req, list) else set()
        for key, val in props.items():
            _render_property(out, str(key), val, key in required, indent)
    out.append(f"{indent}}}")
    return "".join(out)


def _render_property(out: list[str], key: str, val: Any, required: bool, indent: str) -> None:
    mark = "" if required else "?"
    title = _get(val, "title")
    if isinstance(title, str):
        out.append(f"{indent}// {title}\n{indent}//\n")
    has_one_of = isinstance(val, Mapping) and "oneOf" in val
    desc = _get(val, "description")
    if not has_one_of and isinstance(desc, str):
        out.append(f"{indent}// {desc}\n")
    examples = _get(val, "examples")
    if isinstance(examples, list) and examples:
        out.append(f"{indent}// Examples:\n")
        for ex in examples:
            if isinstance(ex, str):
                out.append(f'{indent}// - "{ex}"\n')

    variants = _get(val, "oneOf")
    if isinstance(variants, list):
        prop_desc = desc if isinstance(desc, str) else None
        first_desc = _get(variants[0], "description") if variants else None
        skip_prop_desc = prop_desc is not None and isinstance(first_desc, str) and first_desc == prop_desc
        desc_above = False
        if not skip_prop_desc and prop_desc is not None:
            out.append(f"{indent}// {prop_desc}\n")
            desc_above = True
        if "default" in val:
            out.append(f"{indent}// {_default_comment(val, val['default'], quote_enum_strings=False)}\n")
        out.append(f"{indent}{key}{mark}:\n")
        for i, variant in enumerate(variants):
            out.append(f"{indent} | ")
            out.append(_with_nullable(variant, json_schema_to_typescript(variant, indent + "   ")))
            comments: list[str] = []
            vdesc = _get(variant, "description")
            if not (i == 0 and desc_above) and isinstance(vdesc, str) and vdesc != prop_desc:
                comments.append(vdesc)
            if isinstance(variant, Mapping) and "default" in variant:
                comments.append(_default_comment(variant, variant["default"], quote_enum_strings=False))
            if comments:
                out.append(" // " + " ".join(comments))
            out.append("\n")
        out.append(f"{indent},\n")
        return

    out.append(f"{indent}{key}{mark}: ")
    out.append(_with_nullable(val, json_schema_to_typescript(val, indent + "    ")))
    out.append(",")
    if not has_one_of and isinstance(val, Mapping) and "default" in val:
        out.append(" // " + _default_comment(val, val["default"], quote_enum_strings=False))
    out.append("\n")


def render_tools_section(tools: Mapping[str, ToolNamespaceConfig]) -> str:
    """The ``# Tools`` section: one ``## namespace`` per entry, in sorted key order."""
    sections = ["# Tools"]
    for key in sorted(tools):
        ns = tools[key]
        lines = [f"## {ns.name}\n"]
        if ns.description is not None:
            for line in rust_lines(ns.description):
                lines.append(f"// {line}" if ns.tools else line)
        if ns.tools:
            lines.append(f"namespace {ns.name} {{\n")
            for tool in ns.tools:
                for line in rust_lines(tool.description):
                    lines.append(f"// {line}")
                if tool.parameters is not None:
                    lines.append(f"type {tool.name} = (_: {json_schema_to_typescript(tool.parameters, '')}) => any;\n")
                else:
                    lines.append(f"type {tool.name} = () => any;\n")
            lines.append(f"}} // namespace {ns.name}")
        sections.append("\n".join(lines))
    return "\n\n".join(sections)
