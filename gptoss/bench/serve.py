"""Serving load: streamed chat completions sent to an OpenAI-compatible endpoint, ``concurrency`` at a time,
each with a prompt of about ``prompt_tokens`` tokens asking for exactly ``output_tokens`` tokens; the report
gives throughput and percentiles of time to first token (TTFT), time per output token (TPOT) and end-to-end
latency."""

from __future__ import annotations

import asyncio
import statistics
import time

from gptoss.errors import GptossError


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]

    return {
        "mean": round(statistics.fmean(ordered), 6),
        "p50": round(pick(0.5), 6),
        "p90": round(pick(0.9), 6),
        "p99": round(pick(0.99), 6),
    }


async def one_request(client, model: str, i: int, args) -> dict:
    # " hello" is one o200k token; a request number keeps prompts distinct.
    prompt = f"Request {i}:" + " hello" * max(0, args.prompt_tokens - 4)
    kw = dict(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=args.output_tokens,
        seed=args.seed + i,
        stream=True,
        stream_options={"include_usage": True},
    )
    if args.reasoning_effort:
        kw["reasoning_effort"] = args.reasoning_effort
    start = time.perf_counter()
    first = last = None
    usage = None
    try:
        stream = await client.chat.completions.create(**kw)
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            if chunk.choices:
                d = chunk.choices[0].delta
                if d.content or getattr(d, "reasoning_content", None) or d.tool_calls:
                    now = time.perf_counter()
                    first = first or now
                    last = now
    except Exception as exc:  # recorded, not raised: a load test reports failures
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    end = time.perf_counter()
    tokens = usage.completion_tokens if usage else 0
    return {
        "ok": True,
        "tokens": tokens,
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "ttft": (first - start) if first else None,
        "tpot": ((last - first) / (tokens - 1)) if first and last and tokens > 1 else None,
        "latency": end - start,
    }


async def drive(args) -> dict:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=args.timeout)
    try:
        model = args.model or (await client.models.list()).data[0].id
    except Exception as exc:
        raise GptossError(f"cannot reach {args.base_url}: {type(exc).__name__}: {exc}") from None
    gate = asyncio.Semaphore(args.concurrency)

    async def guarded(i: int) -> dict:
        async with gate:
            return await one_request(client, model, i, args)

    start = time.perf_counter()
    results = await asyncio.gather(*(guarded(i) for i in range(args.requests)))
    wall = time.perf_counter() - start
    ok = [r for r in results if r["ok"]]
    tokens = sum(r["tokens"] for r in ok)
    return {
        "base_url": args.base_url,
        "model": model,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "prompt_tokens": args.prompt_tokens,
        "output_tokens": args.output_tokens,
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "errors": sorted({r["error"] for r in results if not r["ok"]})[:5],
        "wall_seconds": round(wall, 3),
        "output_tokens_per_second": round(tokens / wall, 2) if wall else None,
        "requests_per_second": round(len(ok) / wall, 3) if wall else None,
        "ttft_seconds": percentiles([r["ttft"] for r in ok if r["ttft"] is not None]),
        "tpot_seconds": percentiles([r["tpot"] for r in ok if r["tpot"] is not None]),
        "latency_seconds": percentiles([r["latency"] for r in ok]),
    }


def run_load(args) -> dict:
    """Send the requests ``args`` describes and return the report."""
    return asyncio.run(drive(args))
