"""``gptoss bench-serve``: a load generator for any OpenAI-compatible chat endpoint (ours first).

Sends ``--requests`` streamed chat completions, ``--concurrency`` at a time, each with a prompt of about
``--prompt-tokens`` tokens asking for exactly ``--output-tokens`` tokens, and prints JSON: throughput,
and percentiles of time to first token (TTFT), time per output token (TPOT) and end-to-end latency
(see gptoss/bench/serve.py). Only loopback or addresses you run yourself should be targets.
"""

from __future__ import annotations

import argparse

from gptoss.errors import GptossError
from gptoss.harmony import EFFORT_NAMES


def add_parser(sub) -> None:
    p = sub.add_parser("bench-serve", help="load-test an OpenAI-compatible server (JSON)", description=__doc__)
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="the endpoint to load")
    p.add_argument("--model", default=None, help="model name (default: the server's first model)")
    p.add_argument("--api-key", default="EMPTY", help="API key sent as 'Authorization: Bearer KEY'")
    p.add_argument("--requests", type=int, default=64, help="chat completions to send in all")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    p.add_argument("--prompt-tokens", type=int, default=128, help="approximate prompt length in tokens")
    p.add_argument("--output-tokens", type=int, default=64, help="tokens to generate per request")
    p.add_argument(
        "--reasoning-effort",
        default=None,
        choices=EFFORT_NAMES,
        help="reasoning_effort sent with each request (default: none sent, the server's)",
    )
    p.add_argument("--seed", type=int, default=0, help="request i is sent with seed SEED+i")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one response")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gptoss.bench.common import emit_json
    from gptoss.bench.serve import run_load

    for name in ("requests", "concurrency", "prompt_tokens", "output_tokens"):
        if getattr(args, name) < 1:
            raise GptossError(f"--{name.replace('_', '-')}: expected a positive number, found {getattr(args, name)}")
    result = run_load(args)
    emit_json(result, None)
    return 0 if result["failed"] == 0 else 1
