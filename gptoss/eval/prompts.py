"""Items -> chat messages: the prompt templates, and the seeded shuffle of multiple-choice options."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from gptoss.eval.datasets import LETTERS, SAFETY_EVALS, ChoiceQuestion, IntegerProblem, RubricConversation

INTEGER_TEMPLATE = "{problem}\n\nPlease reason step by step, and put your final answer, an integer, within \\boxed{{}}."
INTEGER_TOOL_HINT = "\n\nYou can run Python code with the `python` tool to check your work."

CHOICE_TEMPLATE = (
    "Answer the following multiple choice question. The last line of your response should be of the "
    "following format: 'Answer: $LETTER' (without quotes) where LETTER is one of {letters}. "
    "Think step by step before answering.\n\n{question}\n\n{options}"
)


@dataclass(frozen=True)
class Prompt:
    """What one attempt sends, and what it is graded against."""

    messages: list[dict]
    expected: int | str | None = None  # the integer answer, or the correct letter after shuffling
    letters: str = ""  # the valid option letters of a multiple-choice prompt
    order: tuple[int, ...] = ()  # shuffled position -> original option index
    response_format: dict | None = None  # sent as the request's response_format (the guard eval's verdict schema)


def shuffle_options(options: Sequence[str], correct: int, key: str) -> tuple[list[str], str, tuple[int, ...]]:
    """Options in a seeded order: (shuffled options, letter of the correct one, original index of each).

    ``key`` (e.g. ``"0:gpqa:rec42:0"``) fully determines the order: the same key gives the same order in
    every process and Python version (string seeds of ``random.Random`` are hashed with SHA-512).
    """
    order = list(range(len(options)))
    random.Random(key).shuffle(order)
    shuffled = [options[i] for i in order]
    return shuffled, LETTERS[order.index(correct)], tuple(order)


def build_prompt(eval_name: str, item, sample: int, seed: int, tools: bool = False, policy=None) -> Prompt:
    """The messages for attempt ``sample`` of ``item``. Options are reshuffled per sample (a fixed ``seed``
    reproduces them), so pass@1 over K samples also averages out position bias."""
    if isinstance(item, IntegerProblem):
        text = INTEGER_TEMPLATE.format(problem=item.problem) + (INTEGER_TOOL_HINT if tools else "")
        return Prompt([{"role": "user", "content": text}], item.answer)
    if isinstance(item, ChoiceQuestion):
        shuffled, letter, order = shuffle_options(item.options, item.correct, f"{seed}:{eval_name}:{item.id}:{sample}")
        letters = LETTERS[: len(shuffled)]
        options = "\n".join(f"{letters[i]}) {text}" for i, text in enumerate(shuffled))
        listed = ", ".join(letters[:-1]) + f" or {letters[-1]}" if len(letters) > 1 else letters
        text = CHOICE_TEMPLATE.format(letters=listed, question=item.question, options=options)
        return Prompt([{"role": "user", "content": text}], letter, letters, order)
    if isinstance(item, RubricConversation):
        return Prompt([dict(m) for m in item.messages])
    if eval_name in SAFETY_EVALS:
        from gptoss.eval.safety import build

        return build(eval_name, item, policy)
    raise TypeError(f"no prompt for {type(item).__name__}")
