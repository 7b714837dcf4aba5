"""``POST /v1/moderations`` in OpenAI's shape, backed by the server's guard and its policies.

Each input string is checked against every policy. ``flagged`` is true when any policy finds a violation
(whatever its action). ``categories`` holds OpenAI's standard categories (true only when a verdict names
one of them, e.g. a policy whose categories include ``violence``) and, as extra keys, one per policy (its
name) and per named category (``POLICY/CATEGORY``); ``category_scores`` holds 1.0 or 0.0 for the same
keys. Existing moderation clients (the openai SDK's ``client.moderations.create``) parse it unchanged.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from pydantic import BaseModel, ConfigDict

from gptoss.server.errors import APIError

MAX_INPUTS = 32


class ModerationRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    input: str | list[Any]
    model: str | None = None


def _texts(value: str | list[Any]) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not value:
        raise APIError(400, "input: expected a string or a non-empty list", param="input")
    if len(value) > MAX_INPUTS:
        raise APIError(400, f"input: at most {MAX_INPUTS} items, found {len(value)}", param="input")
    out = []
    for i, v in enumerate(value):
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, dict) and v.get("type") == "text" and isinstance(v.get("text"), str):
            out.append(v["text"])
        elif isinstance(v, dict) and v.get("type") == "image_url":
            raise APIError(
                400, f"input[{i}]: image inputs are not supported (this guard reads text only)", param=f"input[{i}]"
            )
        else:
            raise APIError(
                400, f"input[{i}]: expected a string or {{'type': 'text', 'text': ...}}", param=f"input[{i}]"
            )
    return out


def register(app, state) -> None:
    from openai.types import Moderation, ModerationCreateResponse
    from openai.types.moderation import Categories, CategoryAppliedInputTypes, CategoryScores

    standard = {f.alias or name: name for name, f in Categories.model_fields.items()}

    @app.post("/v1/moderations")
    async def moderations(body: ModerationRequest):
        guard = getattr(state, "guard", None)
        if guard is None:
            raise APIError(
                404,
                "this server has no moderation guard; start it with --guard POLICY.md",
                type="not_found_error",
                code="moderation_unavailable",
            )
        texts = _texts(body.input)
        rid = "modr-" + secrets.token_hex(12)
        results = []
        decisions = await asyncio.gather(*(guard.check(text, "moderation", rid, "moderations") for text in texts))
        for decision in decisions:
            flags: dict[str, bool] = {key: False for key in standard}
            for r in decision.results:
                violated = r.verdict is not None and r.verdict.violation
                flags[r.policy.name] = flags.get(r.policy.name, False) or violated
                category = r.verdict.category if r.verdict is not None else None
                if category:
                    key = category.lower() if category.lower() in standard else f"{r.policy.name}/{category}"
                    flags[key] = flags.get(key, False) or violated
            applied = {key: ["text"] for key in standard}
            results.append(
                Moderation(
                    flagged=any(r.verdict is not None and r.verdict.violation for r in decision.results)
                    or decision.blocked,  # a guard that could not decide, failing closed, flags too
                    categories=Categories.model_validate(flags),
                    category_scores=CategoryScores.model_validate({k: float(v) for k, v in flags.items()}),
                    category_applied_input_types=CategoryAppliedInputTypes.model_validate(applied),
                )
            )
        model = body.model or guard.settings.model or state.config.model_name
        return ModerationCreateResponse(id=rid, model=model, results=results).model_dump(by_alias=True)
