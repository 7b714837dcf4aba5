"""``gptoss serve`` flags for the policy guard and for what clients see of the reasoning."""

from __future__ import annotations

import argparse
import os
import sys

from gptoss.errors import GptossError
from gptoss.harmony import EFFORT_NAMES

CHECKS = ("input", "output", "tools", "reasoning")


def add_guard_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("safeguards (docs/safety.md)")
    g.add_argument(
        "--guard",
        action="append",
        default=[],
        metavar="POLICY.md",
        help="a policy the guard enforces (repeat for several); turns on input/output checks and /v1/moderations",
    )
    g.add_argument(
        "--guard-model",
        default=None,
        help="guard checkpoint or hub id loaded by gptoss, e.g. openai/gpt-oss-safeguard-20b (default: the "
        "served model); with --guard-base-url, the model name at that endpoint",
    )
    g.add_argument(
        "--guard-base-url", default=None, help="an OpenAI-compatible endpoint running the guard model instead"
    )
    g.add_argument("--guard-api-key", default=None, help="API key of --guard-base-url (default: $GPTOSS_GUARD_API_KEY)")
    g.add_argument("--guard-effort", default="low", choices=EFFORT_NAMES, help="the guard's reasoning effort")
    g.add_argument(
        "--guard-checks",
        default="input,output",
        help=f"what the guard checks, comma-separated among {', '.join(CHECKS)} (default: input,output)",
    )
    g.add_argument(
        "--guard-stream",
        default="end",
        choices=["end", "chunks"],
        help="streamed answers: released only once the whole answer passed (end, default: nothing of a "
        "blocked answer is ever sent) or in checked pieces (chunks: sooner, but the pieces that "
        "passed are sent before a later piece can be blocked)",
    )
    g.add_argument("--guard-chunk-chars", type=int, default=400, help="characters per checked piece (default 400)")
    g.add_argument(
        "--guard-on-error",
        default="block",
        choices=["block", "allow"],
        help="when the guard cannot decide: block (fail closed, default) or allow",
    )
    g.add_argument(
        "--guard-reasoning-max-tokens", type=int, default=256, help="reasoning budget of a local guard (default 256)"
    )
    g.add_argument(
        "--guard-audit",
        default=None,
        help="SQLite audit log of every decision (default: ~/.cache/gptoss/guard-audit.sqlite)",
    )
    p.add_argument(
        "--reasoning",
        default="visible",
        choices=["visible", "hidden"],
        help="what clients see of the analysis channel (the model card warns it may hold unsafe or "
        "hallucinated content: use hidden for end users)",
    )


def guard_settings(args: argparse.Namespace, cache_dir: str):
    """GuardSettings from the flags (None without --guard); policy files are read here, before any model loads."""
    if not args.guard:
        if args.guard_model or args.guard_base_url:
            raise GptossError("--guard-model/--guard-base-url: no policy given; add --guard POLICY.md")
        return None
    from gptoss.guard import GuardSettings
    from gptoss.guard.policy import load_policies

    checks = [c.strip() for c in args.guard_checks.split(",") if c.strip()]
    bad = [c for c in checks if c not in CHECKS]
    if bad or not checks:
        raise GptossError(
            f"--guard-checks: unknown check {bad[0] if bad else '(none)'!r}; choose from {', '.join(CHECKS)}"
        )
    base_url = None
    if args.guard_base_url:
        from gptoss.eval.runner import normalize_base_url

        base_url = normalize_base_url(args.guard_base_url)
    return GuardSettings(
        policies=load_policies(args.guard),
        base_url=base_url,
        model=args.guard_model if base_url else None,
        api_key=args.guard_api_key or os.environ.get("GPTOSS_GUARD_API_KEY"),
        effort=args.guard_effort,
        reasoning_max_tokens=args.guard_reasoning_max_tokens,
        check_input="input" in checks,
        check_output="output" in checks,
        check_tools="tools" in checks,
        check_reasoning="reasoning" in checks,
        stream=args.guard_stream,
        chunk_chars=args.guard_chunk_chars,
        on_error=args.guard_on_error,
        audit_path=args.guard_audit or os.path.join(cache_dir, "guard-audit.sqlite"),
    )


def load_guard_llm(args: argparse.Namespace, settings) -> None:
    """Load --guard-model (a second model on the same device) into ``settings.llm``."""
    if settings is None or not args.guard_model or settings.base_url:
        return
    from gptoss.cli.common import resolve_model_arg
    from gptoss.engine import LLM

    settings.llm = LLM(
        resolve_model_arg(args.guard_model),
        device=args.device,
        dtype=args.dtype,
        max_batch=4,
        max_model_len=args.max_model_len,
        progress=sys.stderr.isatty(),
    )
