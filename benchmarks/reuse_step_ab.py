"""Time the reuse steps of an agent loop (prefix caching) with the CPU attention in query tiles against the
per-query kernel, interleaved in one process (order A B B A ..., so drift in the machine's load cancels), and
how much of each step the attention takes. Prints JSON.

    python benchmarks/reuse_step_ab.py --model /work/ckpt/20b-8l --history 4000 --step 300 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--history", type=int, default=4000)
    ap.add_argument("--step", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2, help="pairs of A B B A steps")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("GPTOSS_NUM_THREADS", str(args.threads))
    import torch

    from gptoss.bench.agent import history, ttft_gptoss
    from gptoss.engine import LLM
    from gptoss.kernels import cpu
    from gptoss.model import Transformer

    torch.set_num_threads(args.threads)
    cpu.set_num_threads(args.threads)
    model = Transformer.from_checkpoint(Path(args.model), device="cpu", dtype=torch.bfloat16)
    steps = 1 + 4 * args.rounds
    prompts = history(min(model.config.vocab_size, 200_000), args.history, args.step, steps, 0)
    llm = LLM(model, max_batch=1, max_model_len=len(prompts[-1]) + 64, tokenizer=object())
    attention_s = [0.0]
    inner = cpu.paged_attention

    def timed(*a, **kw):
        t = time.perf_counter()
        out = inner(*a, **kw)
        attention_s[0] += time.perf_counter() - t
        return out

    cpu.paged_attention = timed
    tiles = cpu.ATTENTION_TILES

    def ttft(prompt: list[int], tiled: bool) -> tuple[float, float]:
        cpu.ATTENTION_TILES = tiles if tiled else ()  # no tile: the per-query kernel is the only candidate
        attention_s[0] = 0.0
        seconds, _ = ttft_gptoss(llm, prompt)
        return seconds, attention_s[0]

    cold, cold_attn = ttft(prompts[0], True)
    rows = []
    order = [True, False, False, True] * args.rounds
    for prompt, tiled in zip(prompts[1:], order):
        s, a = ttft(prompt, tiled)
        rows.append({"history_tokens": len(prompt), "tiled": tiled, "ttft_s": round(s, 3), "attention_s": round(a, 3)})

    def mean(key, tiled):
        return sum(r[key] for r in rows if r["tiled"] == tiled) / (2 * args.rounds)

    print(
        json.dumps(
            {
                "benchmark": "reuse_step_ab",
                "model": args.model,
                "threads": args.threads,
                "load_average": os.getloadavg(),
                "cold_prefill_tokens": len(prompts[0]),
                "cold_ttft_s": round(cold, 3),
                "cold_attention_s": round(cold_attn, 3),
                "steps": rows,
                "tiled_ttft_s": round(mean("ttft_s", True), 3),
                "per_query_ttft_s": round(mean("ttft_s", False), 3),
                "tiled_attention_s": round(mean("attention_s", True), 3),
                "per_query_attention_s": round(mean("attention_s", False), 3),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
