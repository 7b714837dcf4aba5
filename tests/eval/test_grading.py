"""Option shuffling, exact-match grading, and HealthBench rubric scoring."""

import asyncio
import re

import pytest

from gptoss.eval.datasets import ChoiceQuestion, RubricItem
from gptoss.eval.grading import (
    RubricGrader,
    clipped_mean,
    grade_exact,
    parse_criteria_met,
    rubric_score,
    theme_scores,
)
from gptoss.eval.prompts import build_prompt, shuffle_options

OPTIONS = ["right", "wrong one", "wrong two", "wrong three"]


def test_shuffle_is_deterministic_and_maps_the_answer():
    a = shuffle_options(OPTIONS, 0, "0:gpqa:q1:0")
    assert a == shuffle_options(OPTIONS, 0, "0:gpqa:q1:0")  # same key, same order
    shuffled, letter, order = a
    assert sorted(shuffled) == sorted(OPTIONS)
    assert shuffled["ABCD".index(letter)] == "right"
    assert [OPTIONS[i] for i in order] == shuffled
    # other keys give other orders, and the right answer lands on every letter
    letters = {shuffle_options(OPTIONS, 0, f"{seed}:gpqa:q1:0")[1] for seed in range(40)}
    assert letters == set("ABCD")
    # the correct index need not be 0
    shuffled, letter, _ = shuffle_options(OPTIONS, 2, "7:mmlu:x:0")
    assert shuffled["ABCD".index(letter)] == "wrong two"


def test_shuffle_is_stable_across_processes():
    # string seeds are hashed with SHA-512, not hash(): this order is the same in every process
    assert shuffle_options(OPTIONS, 0, "0:gpqa:q1:0") == shuffle_options(list(OPTIONS), 0, "0:gpqa:q1:0")
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from gptoss.eval.prompts import shuffle_options as s;print(s({OPTIONS!r}, 0, '0:gpqa:q1:0')[1])",
        ],
        capture_output=True,
        text=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
        check=True,
    )
    assert out.stdout.strip() == shuffle_options(OPTIONS, 0, "0:gpqa:q1:0")[1]


def test_choice_prompt_lists_shuffled_options_and_grades_the_mapped_letter():
    q = ChoiceQuestion("q1", "Which is right?", tuple(OPTIONS), 0)
    p = build_prompt("gpqa", q, sample=0, seed=3)
    text = p.messages[0]["content"]
    listed = dict(re.findall(r"^([A-D])\) (.*)$", text, flags=re.MULTILINE))
    assert sorted(listed.values()) == sorted(OPTIONS)
    assert listed[p.expected] == "right"
    assert p.letters == "ABCD"
    assert build_prompt("gpqa", q, sample=0, seed=3) == p
    assert grade_exact(p.expected, p.expected) == 1.0
    assert grade_exact(None, p.expected) == 0.0
    assert grade_exact("Z", p.expected) == 0.0


def test_grade_exact_integers():
    assert grade_exact(42, 42) == 1.0
    assert grade_exact(41, 42) == 0.0
    assert grade_exact(None, 0) == 0.0


RUBRIC = [
    RubricItem("calls emergency services", 10),
    RubricItem("explains stroke signs", 5),
    RubricItem("advises waiting it out", -10),
]


def test_rubric_score_counts_negative_items():
    assert rubric_score(RUBRIC, [True, True, False]) == 1.0
    assert rubric_score(RUBRIC, [True, False, False]) == pytest.approx(10 / 15)
    assert rubric_score(RUBRIC, [True, True, True]) == pytest.approx(5 / 15)  # the bad behaviour costs points
    assert rubric_score(RUBRIC, [False, False, True]) == pytest.approx(-10 / 15)  # unclipped per example
    with pytest.raises(ValueError):
        rubric_score([RubricItem("only bad", -3)], [True])
    with pytest.raises(ValueError):
        rubric_score(RUBRIC, [True])


def test_clipping_and_themes():
    assert clipped_mean([-0.5, -0.2]) == 0.0
    assert clipped_mean([1.0, 1.0]) == 1.0
    assert clipped_mean([0.5, -0.1]) == pytest.approx(0.2)  # negatives pull the mean down before clipping
    assert clipped_mean([]) is None
    overall, themes = theme_scores([("emergency", 1.0), ("emergency", 0.5), ("context", -0.6), ("global", 0.3)])
    assert overall == pytest.approx((1.0 + 0.5 - 0.6 + 0.3) / 4)
    assert themes == {"context": 0.0, "emergency": pytest.approx(0.75), "global": pytest.approx(0.3)}


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"explanation": "ok", "criteria_met": true}', True),
        ('```json\n{"explanation": "no", "criteria_met": false}\n```', False),
        ('Thinking... here is my verdict: {"explanation": "has {braces}", "criteria_met": true} done', True),
        ("criteria_met: False", False),
        ('{"criteria_met": "yes"}', None),
        ("I cannot decide.", None),
        ("", None),
    ],
)
def test_parse_grader_verdict(text, expected):
    assert parse_criteria_met(text) is expected


def test_rubric_grader_asks_per_item_and_retries_unparsable_replies():
    calls = []

    async def complete(messages):
        prompt = messages[0]["content"]
        calls.append(prompt)
        assert "# Conversation" in prompt and "assistant: Call 911 now." in prompt
        if "[-10] advises waiting" in prompt:
            return "hmm", 3  # never a verdict: counted as not met after the retries
        if "[5] explains" in prompt:
            return '{"explanation": "no", "criteria_met": false}', 2
        return '{"explanation": "yes", "criteria_met": true}', 1

    grader = RubricGrader(complete, parse_retries=2)
    grade = asyncio.run(grader.grade([{"role": "user", "content": "Help!"}], "Call 911 now.", RUBRIC))
    assert grade.met == [True, False, False]
    assert grade.score == pytest.approx(10 / 15)
    assert grade.unparsed == 1
    assert len(calls) == 1 + 1 + 3
    assert grade.grader_tokens == 1 + 2 + 3 * 3
    assert [d["met"] for d in grade.details] == [True, False, None]
