"""``gptoss eval``: AIME, GPQA, MMLU and HealthBench at several reasoning efforts against any
OpenAI-compatible endpoint (``gptoss serve`` first), with resume, a summary, a Markdown report and plots;
on request the safety evals too (disallowed, jailbreak, hierarchy, simpleqa, guard: docs/safety.md).

Rerunning the same command with the same --out resumes: finished attempts are kept, failed or missing
ones are run. Data comes from the packaged sample sets unless --data names files or the Hugging Face hub
(docs/eval.md describes the schemas).
"""

from __future__ import annotations

import argparse
import os
import sys

from gptoss.harmony import EFFORT_NAMES


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def add_parser(sub) -> None:
    from gptoss.eval.datasets import EVALS, SAFETY_EVALS

    p = sub.add_parser(
        "eval",
        help="evaluate a model served over an OpenAI-compatible API",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--base-url",
        default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1"),
        help="the endpoint, e.g. http://127.0.0.1:8000/v1 (default: $OPENAI_BASE_URL or that)",
    )
    p.add_argument("--model", default=None, help="model name at the endpoint (default: the one model it lists)")
    p.add_argument("--api-key", default=None, help="API key (default: $OPENAI_API_KEY or EMPTY)")
    p.add_argument(
        "--eval",
        dest="evals",
        type=_csv,
        default=list(EVALS),
        help=f"comma-separated evals (default: {','.join(EVALS)}); safety evals on request: "
        f"{','.join(SAFETY_EVALS)} (docs/safety.md)",
    )
    p.add_argument(
        "--guard-policy",
        default=None,
        help="the guard eval's policy file (default: the packaged moderation-categories policy)",
    )
    p.add_argument(
        "--reasoning-effort",
        dest="efforts",
        type=_csv,
        default=list(EFFORT_NAMES),
        help="comma-separated efforts among low, medium, high (default: all three)",
    )
    p.add_argument("--samples", type=int, default=1, help="attempts per item; scores are pass@1 averaged over them")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--limit", type=int, default=None, help="only the first N items of each eval")
    p.add_argument("--tools", type=_csv, default=[], help="'python' gives the model a Python tool on AIME")
    p.add_argument(
        "--data",
        default=None,
        help="samples (default), hub, a folder of {eval}.jsonl|csv|parquet, or EVAL=SOURCE pairs "
        "(SOURCE: a file, samples, hub or hf://OWNER/NAME/FILE); the hub is only used when named",
    )
    p.add_argument("--max-tokens", type=int, default=None, help="cap on output tokens per request (default: server's)")
    p.add_argument(
        "--temperature", type=float, default=1.0, help="sampling temperature (default 1.0, as recommended for gpt-oss)"
    )
    p.add_argument("--seed", type=int, default=0, help="seeds option shuffling and per-request sampling seeds")
    p.add_argument("--grader-base-url", default=None, help="HealthBench grader endpoint (default: --base-url)")
    p.add_argument("--grader-model", default=None, help="HealthBench grader model (default: --model)")
    p.add_argument("--grader-api-key", default=None, help="grader API key (default: --api-key)")
    p.add_argument(
        "--grader-max-tokens", type=int, default=None, help="cap on grader output tokens (default: --max-tokens)"
    )
    p.add_argument(
        "--grader-reasoning-effort",
        default=None,
        choices=EFFORT_NAMES,
        help="reasoning effort asked of the grader (default: the grader's)",
    )
    p.add_argument(
        "--grader-retries", type=int, default=2, help="asks again when a grader reply holds no verdict (default 2)"
    )
    p.add_argument("--retries", type=int, default=5, help="retries of a request on connection errors, 429 and 5xx")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one response")
    p.add_argument("--out", "-o", required=True, help="output folder (attempts.jsonl, summary.json, report.md, plots)")
    p.add_argument(
        "--report-only", action="store_true", help="rebuild summary and report from recorded attempts; ask nothing"
    )
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it is off anyway when stderr is not a terminal)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gptoss.eval.report import REPORT_FILE, text_table
    from gptoss.eval.runner import Endpoint, EvalConfig, run_eval

    endpoint = Endpoint(args.base_url, args.model, args.api_key)
    grader = None
    if args.grader_base_url or args.grader_model or args.grader_api_key:
        grader = Endpoint(
            args.grader_base_url or args.base_url, args.grader_model or args.model, args.grader_api_key or args.api_key
        )
    config = EvalConfig(
        endpoint=endpoint,
        out=args.out,
        evals=args.evals,
        efforts=args.efforts,
        samples=args.samples,
        concurrency=args.concurrency,
        limit=args.limit,
        tools=args.tools,
        data=args.data,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
        grader=grader,
        grader_max_tokens=args.grader_max_tokens,
        grader_reasoning_effort=args.grader_reasoning_effort,
        grader_retries=args.grader_retries,
        guard_policy=args.guard_policy,
        retries=args.retries,
        timeout=args.timeout,
        progress=False if args.no_progress else None,
    )
    try:
        summary = run_eval(config, report_only=args.report_only)
    except KeyboardInterrupt:
        print(f"gptoss eval: interrupted; rerun the same command to resume from {args.out}", file=sys.stderr)
        return 130
    print(text_table(summary))
    attempts = summary["attempts"]
    print(
        f"report: {os.path.join(args.out, REPORT_FILE)}  ({attempts['completed']}/{attempts['planned']} attempts done, "
        f"{attempts['errors']} failed)"
    )
    if not args.report_only and (attempts["errors"] or attempts["missing"]):
        print("gptoss eval: some attempts failed; rerun the same command to retry only those", file=sys.stderr)
        return 1
    return 0
