"""The guard's prompt and verdict.

The prompt follows the "bring your own policy" shape gpt-oss-safeguard was trained on: the deployer's policy
is the developer instruction (the Chat API's system message), the content to classify is the user message,
the reasoning effort sits in the Harmony system message, and the final answer is a small JSON object:
``{"violation": 0|1, "policy_category": <category or null>, "rationale": <one sentence>}``.

When gptoss runs the guard model itself, the answer is decoded under the Harmony turn grammar with that
JSON Schema as the final channel's format (bounded reasoning, bounded strings), so every verdict parses,
whatever the weights. Over an endpoint the same schema goes as ``response_format``; a reply that does
not parse is an error, never a silent "allowed".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from gptoss.guard.policy import Policy
from gptoss.harmony.grammar import TurnGrammar

RATIONALE_MAX_CHARS = 240
CATEGORY_MAX_CHARS = 64

OUTPUT_INSTRUCTIONS = (
    """# Output format
Decide whether the content in the user message violates the policy above. Reason about it first, then answer
with one JSON object and nothing else:
{{"violation": 1 if the content violates the policy else 0, "policy_category": {category_hint}, """
    '"rationale": "one short sentence explaining the decision"}}'
)


class VerdictError(ValueError):
    """A guard reply that is not a verdict."""


@dataclass(frozen=True)
class Verdict:
    violation: bool
    category: str | None
    rationale: str


def verdict_schema(policy: Policy, rationale_max: int = RATIONALE_MAX_CHARS) -> dict[str, Any]:
    """The JSON Schema of a verdict on ``policy``: its declared categories, or a short free string."""
    if policy.categories:
        category: dict[str, Any] = {"anyOf": [{"enum": list(policy.categories)}, {"type": "null"}]}
    else:
        category = {"anyOf": [{"type": "string", "maxLength": CATEGORY_MAX_CHARS}, {"type": "null"}]}
    return {
        "type": "object",
        "properties": {
            "violation": {"enum": [0, 1]},
            "policy_category": category,
            "rationale": {"type": "string", "maxLength": rationale_max},
        },
        "required": ["violation", "policy_category", "rationale"],
        "additionalProperties": False,
    }


def developer_text(policy: Policy) -> str:
    """The policy and the output instructions: the developer message of the guard's prompt."""
    hint = (
        "one of " + ", ".join(json.dumps(c) for c in policy.categories) + " or null"
        if policy.categories
        else "the policy's name for the violated rule, or null"
    )
    return f"{policy.text}\n\n{OUTPUT_INSTRUCTIONS.format(category_hint=hint)}"


def guard_messages(policy: Policy, content: str) -> list[dict[str, str]]:
    """Chat Completions messages asking the guard about ``content`` under ``policy``."""
    return [{"role": "system", "content": developer_text(policy)}, {"role": "user", "content": content}]


def verdict_grammar(policy: Policy, reasoning_max_tokens: int | None, rationale_max: int = RATIONALE_MAX_CHARS) -> str:
    """The Lark grammar of the guard's turn: at most one bounded analysis message, then the verdict as JSON."""
    return TurnGrammar(
        final_schema=verdict_schema(policy, rationale_max), reasoning_max_tokens=reasoning_max_tokens
    ).lark()


def parse_verdict(text: str | None, policy: Policy | None = None) -> Verdict:
    """A verdict from a guard's answer: the JSON object (bare or fenced); ``violation`` may also be a
    boolean or "yes"/"no", as endpoints without schema enforcement write it. Raises VerdictError."""
    if not text or not text.strip():
        raise VerdictError("the guard's answer is empty")
    body = re.sub(r"```(?:json)?", "", text).strip()
    obj = None
    for candidate in [body] + re.findall(r"\{.*\}", body, flags=re.DOTALL):
        try:
            value = json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(value, dict):
            obj = value
            break
    if obj is None:
        raise VerdictError(f"the guard's answer is not a JSON object: {text.strip()[:120]!r}")
    raw = obj.get("violation")
    if isinstance(raw, bool) or raw in (0, 1):
        violation = bool(raw)
    elif isinstance(raw, str) and raw.strip().lower() in ("0", "1", "yes", "no", "true", "false"):
        violation = raw.strip().lower() in ("1", "yes", "true")
    else:
        raise VerdictError(f"the guard's verdict has no 'violation' of 0 or 1 (found {raw!r})")
    category = obj.get("policy_category", obj.get("category"))
    category = str(category)[:CATEGORY_MAX_CHARS] if category not in (None, "") else None
    rationale = obj.get("rationale", "")
    rationale = rationale if isinstance(rationale, str) else json.dumps(rationale)
    return Verdict(violation, category, rationale[:2000])
