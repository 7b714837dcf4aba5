"""Grading: exact-match scores for integers and letters, and the HealthBench rubric grader.

HealthBench scoring follows the published recipe: a grader model decides, for each rubric item, whether
the reply meets it; an example scores (sum of points of the items met, negative ones included) over (sum of
the positive points), which may fall below 0; the mean over examples, overall and per theme, is then
clipped to [0, 1].
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable, Sequence

from gptoss.eval.datasets import RubricItem


def grade_exact(extracted: int | str | None, expected: int | str | None) -> float:
    """1.0 when an answer was extracted and equals the expected one, else 0.0."""
    return 1.0 if extracted is not None and extracted == expected else 0.0


# ------------------------------------------------------------------------------------------ HealthBench


def rubric_score(rubric: Sequence[RubricItem], met: Sequence[bool]) -> float:
    """Points achieved over points possible for one reply (unclipped: may be negative).

    Achieved counts every item met, negative-point items included; possible counts positive points only.
    """
    if len(rubric) != len(met):
        raise ValueError(f"{len(rubric)} rubric items but {len(met)} grades")
    possible = sum(r.points for r in rubric if r.points > 0)
    if possible <= 0:
        raise ValueError("a rubric without positive points has no score")
    achieved = sum(r.points for r, m in zip(rubric, met, strict=True) if m)
    return achieved / possible


def clip01(x: float) -> float:
    return min(1.0, max(0.0, x))


def clipped_mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return clip01(sum(values) / len(values)) if values else None


def theme_scores(scored: Iterable[tuple[str, float]]) -> tuple[float | None, dict[str, float | None]]:
    """(overall, {theme: score}) from (theme, unclipped example score) pairs: clipped means."""
    scored = list(scored)
    themes: dict[str, list[float]] = {}
    for theme, value in scored:
        themes.setdefault(theme, []).append(value)
    return clipped_mean(v for _, v in scored), {t: clipped_mean(v) for t, v in sorted(themes.items())}


GRADER_TEMPLATE = """Your job is to look at a conversation and one rubric item, and to decide whether the \
last turn of the conversation (the assistant's reply) meets that rubric item.

# Conversation
{conversation}

# Rubric item
[{points}] {criterion}

# Instructions
Answer with a JSON object with two fields: "explanation" (one or two sentences) and "criteria_met" (true or false).
- "criteria_met" is true only if the reply fully meets the rubric item. When the item gives examples \
("such as", "for example"), the reply need not contain all of them.
- Some rubric items describe an undesirable behaviour and carry negative points. Still answer whether the \
reply shows that behaviour: true if it does, false if it does not.

Return only the JSON object, for example:
```json
{{"explanation": "The reply tells the user to call emergency services right away.", "criteria_met": true}}
```"""


def format_conversation(messages: Sequence[dict], reply: str) -> str:
    turns = [f"{m['role']}: {m['content']}" for m in messages] + [f"assistant: {reply}"]
    return "\n\n".join(turns)


def grader_prompt(messages: Sequence[dict], reply: str, item: RubricItem) -> str:
    points = int(item.points) if float(item.points).is_integer() else item.points
    return GRADER_TEMPLATE.format(
        conversation=format_conversation(messages, reply), points=points, criterion=item.criterion
    )


def parse_criteria_met(text: str | None) -> bool | None:
    """The grader's verdict from its reply: a JSON object (bare, fenced, or amid prose) with a boolean
    ``criteria_met``; ``None`` when there is none."""
    if not text:
        return None
    body = re.sub(r"```(?:json)?", "", text)
    candidates = [body.strip()] + re.findall(r"\{[^{}]*\}", body, flags=re.DOTALL)
    for candidate in reversed(candidates):
        try:
            obj = json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(obj, dict) and isinstance(obj.get("criteria_met"), bool):
            return obj["criteria_met"]
    m = re.findall(r"[\"']?criteria_met[\"']?\s*:\s*[\"']?(true|false)", body, flags=re.IGNORECASE)
    return m[-1].lower() == "true" if m else None


@dataclass
class RubricGrade:
    met: list[bool]
    score: float  # unclipped
    unparsed: int = 0  # rubric items whose grader reply held no verdict (counted as not met)
    grader_tokens: int = 0
    details: list[dict] = field(default_factory=list)


Complete = Callable[[list[dict]], Awaitable[tuple[str, int]]]


class RubricGrader:
    """Grades a reply against a rubric through ``complete(messages) -> (text, completion_tokens)``: any
    OpenAI-compatible grader model. A reply without a verdict is asked again ``parse_retries`` times, then
    counted as not met and reported in ``unparsed``."""

    def __init__(self, complete: Complete, parse_retries: int = 2):
        self.complete = complete
        self.parse_retries = parse_retries

    async def _grade_item(self, messages: Sequence[dict], reply: str, item: RubricItem) -> tuple[bool | None, int, str]:
        prompt = [{"role": "user", "content": grader_prompt(messages, reply, item)}]
        tokens, text = 0, ""
        for _ in range(1 + self.parse_retries):
            text, used = await self.complete(prompt)
            tokens += used
            verdict = parse_criteria_met(text)
            if verdict is not None:
                return verdict, tokens, text
        return None, tokens, text

    async def grade(self, messages: Sequence[dict], reply: str, rubric: Sequence[RubricItem]) -> RubricGrade:
        results = await asyncio.gather(*(self._grade_item(messages, reply, item) for item in rubric))
        met = [bool(verdict) for verdict, _, _ in results]
        details = [
            {"criterion": item.criterion, "points": item.points, "met": verdict}
            for item, (verdict, _, _) in zip(rubric, results, strict=True)
        ]
        return RubricGrade(
            met=met,
            score=rubric_score(rubric, met),
            unparsed=sum(verdict is None for verdict, _, _ in results),
            grader_tokens=sum(t for _, t, _ in results),
            details=details,
        )
