"""Evaluation harness: AIME, GPQA, MMLU and HealthBench against any OpenAI-compatible endpoint.

``datasets`` (schemas and sources) -> ``prompts`` (templates, option shuffling) -> ``runner`` (concurrent
attempts, retries, resume) -> ``extract`` / ``grading`` (answers, rubric grader) -> ``report`` (summary,
Markdown, plots). The command is ``gptoss eval``; the schemas are documented in docs/eval.md.
"""

from gptoss.eval.runner import EFFORTS, Endpoint, EvalConfig, run_eval

__all__ = ["EFFORTS", "Endpoint", "EvalConfig", "run_eval"]
