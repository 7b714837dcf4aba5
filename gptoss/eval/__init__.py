"""Evaluation harness: AIME, GPQA, MMLU and HealthBench against any OpenAI-compatible endpoint.

``datasets`` (schemas and sources) -> ``prompts`` (templates, option shuffling) -> ``runner`` (concurrent
attempts, retries, resume) -> ``extract`` / ``grading`` (answers, rubric grader) -> ``report`` (summary,
Markdown, plots). The command is ``gptoss eval``; the schemas are documented in docs/eval.md.
The names below are imported on first use (``gptoss eval --help`` reads only ``datasets``).
"""

from __future__ import annotations

import importlib

__all__ = ["EFFORTS", "Endpoint", "EvalConfig", "run_eval"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'gptoss.eval' has no attribute {name!r}")
    value = getattr(importlib.import_module("gptoss.eval.runner"), name)
    globals()[name] = value
    return value
