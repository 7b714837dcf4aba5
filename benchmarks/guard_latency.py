"""The latency a policy guard adds to a request, on the CPU with tiny synthetic models, as JSON.

    python3 benchmarks/guard_latency.py [--requests 5] [--max-tokens 24] [--guard-reasoning 16]

The policy's action is flag, so that every request runs both checks whatever the random guard decides.
One tiny synthetic checkpoint is served; a second one (another seed) is the guard, loaded by gptoss
(``--guard-model``'s path) and decoded under the verdict grammar. Measured side by side in one run,
through the HTTP server with the openai client, each median over ``--requests`` requests:

- ``plain``: a chat request without a guard; ``guarded``: the same request with input and output checks;
- per check, from the audit log: the input check and the output check (median ms);
- streaming: time to the first content chunk and to the end, with the answer released in checked pieces
  (``chunks``) and only once complete (``end``), against the unguarded stream.

Random weights: the times say what the guard's machinery costs at this size (a prompt of a few hundred
tokens, a bounded verdict), not what gpt-oss-safeguard-20b costs; ratios are the point.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

POLICY = """---
name: bench
action: flag
categories: A, B
---
# Benchmark policy
Content that asks for help with violence (A) or fraud (B) violates this policy. Everything else does not.
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serve(app):
    import httpx
    import uvicorn

    port = _port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _median_ms(values) -> float:
    return round(1000 * statistics.median(values), 1)


def _requests(base: str, n: int, max_tokens: int, stream: bool) -> dict:
    from openai import OpenAI

    client = OpenAI(base_url=base + "/v1", api_key="x")
    totals, firsts, ids = [], [], []
    for i in range(n):
        msgs = [{"role": "user", "content": f"Tell me something about the number {i}."}]
        start = time.perf_counter()
        if stream:
            first = None
            for chunk in client.chat.completions.create(
                model="gpt-oss", messages=msgs, max_tokens=max_tokens, seed=i, stream=True
            ):
                ids.append(chunk.id)
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - start
            firsts.append(first if first is not None else time.perf_counter() - start)
        else:
            ids.append(client.chat.completions.create(model="gpt-oss", messages=msgs, max_tokens=max_tokens, seed=i).id)
        totals.append(time.perf_counter() - start)
    out = {"total_ms": _median_ms(totals), "ids": sorted(set(ids))}
    if stream:
        out["first_content_ms"] = _median_ms(firsts)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--guard-reasoning", type=int, default=16, help="the guard's reasoning budget (tokens)")
    ap.add_argument("--rationale-chars", type=int, default=48)
    ap.add_argument("--chunk-chars", type=int, default=40)
    args = ap.parse_args()

    import torch

    from gptoss.conversation.openai_chat import ServerPersona
    from gptoss.engine import LLM
    from gptoss.guard import GuardSettings
    from gptoss.guard.audit import AuditLog
    from gptoss.guard.policy import parse_policy
    from gptoss.model import ModelConfig
    from gptoss.model.synthetic import write_checkpoint
    from gptoss.server.app import ServerConfig, create_app

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tmp = Path(tempfile.mkdtemp(prefix="guard-bench-"))
    served = write_checkpoint(tmp / "served", ModelConfig.preset("tiny"), seed=1)
    guard_ckpt = write_checkpoint(tmp / "guard", ModelConfig.preset("tiny"), seed=2)
    policy = parse_policy(POLICY, "bench.md", "bench")
    persona = ServerPersona(reasoning_max_tokens=8)

    def llm(path):
        return LLM(path, device="cpu", dtype="float32", max_batch=4, max_model_len=2048)

    def guarded(stream_mode: str, audit: Path):
        return GuardSettings(
            policies=[policy],
            llm=llm(guard_ckpt),
            reasoning_max_tokens=args.guard_reasoning,
            rationale_max_chars=args.rationale_chars,
            stream=stream_mode,
            chunk_chars=args.chunk_chars,
            audit_path=str(audit),
        )

    results: dict = {
        "config": {
            "device": "cpu",
            "preset": "tiny",
            "requests": args.requests,
            "max_tokens": args.max_tokens,
            "guard_reasoning_max_tokens": args.guard_reasoning,
            "rationale_max_chars": args.rationale_chars,
            "chunk_chars": args.chunk_chars,
            "threads": torch.get_num_threads(),
        }
    }
    with _serve(create_app(llm(served), ServerConfig(persona=persona))) as base:
        _requests(base, 1, args.max_tokens, False)  # warm up (grammar compilation, first allocations)
        results["plain"] = _requests(base, args.requests, args.max_tokens, False)
        results["plain_stream"] = _requests(base, args.requests, args.max_tokens, True)
    for mode in ("chunks", "end"):
        audit = tmp / f"audit-{mode}.sqlite"
        with _serve(create_app(llm(served), ServerConfig(persona=persona, guard=guarded(mode, audit)))) as base:
            _requests(base, 1, args.max_tokens, False)
            if mode == "chunks":
                plain = _requests(base, args.requests, args.max_tokens, False)
                rows = [r for i in plain["ids"] for r in AuditLog(audit).records(i)]
                results["guarded"] = {
                    "total_ms": plain["total_ms"],
                    "input_check_ms": _median_ms([r.latency_ms / 1000 for r in rows if r.stage == "input"]),
                    "output_check_ms": _median_ms([r.latency_ms / 1000 for r in rows if r.stage == "output"]),
                    "verdicts_parsed": sum(r.error is None for r in rows),
                    "checks": len(rows),
                }
            streamed = _requests(base, args.requests, args.max_tokens, True)
            rows = [r for i in streamed["ids"] for r in AuditLog(audit).records(i)]
            results[f"stream_{mode}"] = {
                "first_content_ms": streamed["first_content_ms"],
                "total_ms": streamed["total_ms"],
                "output_checks_per_request": len([r for r in rows if r.stage == "output"]) / args.requests,
            }
    for key in ("plain", "plain_stream"):
        results[key].pop("ids", None)
    results["added_ms"] = {
        "request": round(results["guarded"]["total_ms"] - results["plain"]["total_ms"], 1),
        "stream_first_content_chunks": round(
            results["stream_chunks"]["first_content_ms"] - results["plain_stream"]["first_content_ms"], 1
        ),
        "stream_first_content_end": round(
            results["stream_end"]["first_content_ms"] - results["plain_stream"]["first_content_ms"], 1
        ),
    }
    results["ratio_guarded_over_plain"] = round(results["guarded"]["total_ms"] / results["plain"]["total_ms"], 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
