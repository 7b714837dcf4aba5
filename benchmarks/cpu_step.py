"""Time the CPU fast path against the reference path on real gpt-oss-20b layer shapes with few layers.

Random weights in memory (bf16; random MXFP4 codes), the slot KV cache, one interleaved run. Prints JSON: prefill tok/s,
decode ms a step at batch 1 and batch B after the prompt, for ``auto`` (native kernels) and, unless
--no-reference, ``off`` (the plain-torch reference).

    python benchmarks/cpu_step.py --layers 2 --prompt-len 512 --decode-steps 8 --batch 8
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from gptoss import kernels
from gptoss.kernels import cpu
from gptoss.model import KVCache, ModelConfig, StepBatch, Transformer
from gptoss.model.checkpoint import canonical_shapes
from gptoss.model.rope import RotaryEmbedding


def quick_model(config: ModelConfig) -> Transformer:
    """Random bf16 weights and random MXFP4 codes (scales near 2**-4), fast to build: timing needs no
    realistic values (gptoss.model.synthetic quantizes real random matrices, minutes at these sizes)."""
    model = Transformer(config, device="meta", dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    for name, (shape, kind) in canonical_shapes(config).items():
        if kind == "uint8":
            lo, hi = (0, 256) if name.endswith("blocks") else (121, 125)
            t = torch.randint(lo, hi, shape, dtype=torch.uint8, generator=g)
        else:
            t = torch.empty(shape, dtype=torch.float32).normal_(0, 0.02, generator=g).to(torch.bfloat16)
        model.set_tensor(name, t, "cpu")
    model.rope = RotaryEmbedding(config, device="cpu")
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--decode-steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--reference-prefill-len", type=int, default=64, help="the reference is slow: a shorter prefill")
    p.add_argument("--profile", action="store_true", help="print torch profiler tables of one fast decode step")
    args = p.parse_args()
    if args.threads:
        cpu.set_num_threads(args.threads)
    config = ModelConfig.preset("gpt-oss-20b").replace(num_hidden_layers=args.layers)
    t0 = time.perf_counter()
    model = quick_model(config)
    out = {
        "layers": args.layers,
        "threads": cpu.num_threads(),
        "isa": cpu.chosen_isa(),
        "build_s": round(time.perf_counter() - t0, 1),
    }
    g = torch.Generator().manual_seed(0)
    modes = ["auto"] + ([] if args.no_reference else ["off"])
    for mode in modes:
        plen = args.prompt_len if mode == "auto" else min(args.prompt_len, args.reference_prefill_len)
        prompt = torch.randint(0, config.vocab_size, (plen,), generator=g)
        res = {}
        with kernels.use(mode):
            cache = KVCache(config, args.batch, plen + args.decode_steps + 1, dtype=model.dtype)
            model.step(prompt[:8], StepBatch.single(8), cache, logits_index=torch.tensor([7]))  # warm-up
            t = time.perf_counter()
            model.step(prompt, StepBatch.single(plen), cache, logits_index=torch.tensor([plen - 1]))
            dt = time.perf_counter() - t
            res["prefill"] = {"tokens": plen, "seconds": round(dt, 3), "tok_s": round(plen / dt, 2)}
            for s in range(1, args.batch):
                cache.copy_slot(0, s, plen)
            for b in sorted({1, args.batch}):
                steps = args.decode_steps if mode == "auto" else 2
                times = []
                for i in range(steps):
                    toks = torch.randint(0, config.vocab_size, (b,), generator=g)
                    batch = StepBatch.of(list(range(b)), [plen + i] * b, [1] * b)
                    t = time.perf_counter()
                    model.step(toks, batch, cache, logits_index=batch.last_index)
                    times.append(time.perf_counter() - t)
                best = min(times)
                res[f"decode_b{b}"] = {
                    "ms_per_step_best": round(1000 * best, 1),
                    "ms_per_step_median": round(1000 * sorted(times)[len(times) // 2], 1),
                    "tok_s": round(b / best, 2),
                }
            if args.profile and mode == "auto":
                from torch.profiler import ProfilerActivity, profile

                batch = StepBatch.of([0], [plen], [1])
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    model.step(torch.tensor([5]), batch, cache, logits_index=batch.last_index)
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        out[mode] = res
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
