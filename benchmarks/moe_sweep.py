"""Time the MoE kernels of one gpt-oss layer under several tile configurations (GPU only), as JSON.

    python3 benchmarks/moe_sweep.py [--preset gpt-oss-20b] [--tokens 1,64,2048] [--out moe-sweep.json]

The default configuration (gptoss.kernels.moe._config) was chosen without a GPU at hand; this prints,
for each token count, the time of each candidate and the best one, to set ``GPTOSS_MOE_CONFIG`` or to
update ``_config``. Also reports the achieved bandwidth (decode) and TFLOP/s (prefill) of the best.
"""

from __future__ import annotations

import argparse
import json

import torch
import triton

from gptoss.kernels import moe
from gptoss.model import ModelConfig
from gptoss.model.mxfp4 import MXFP4Weight

CANDIDATES = [  # BLOCK_M, BLOCK_N, BLOCK_K, warps, stages
    (16, 32, 64, 4, 4),
    (16, 64, 64, 4, 4),
    (16, 32, 128, 4, 3),
    (16, 64, 32, 4, 4),
    (32, 64, 64, 4, 3),
    (64, 64, 64, 4, 3),
    (64, 128, 64, 8, 3),
    (128, 64, 64, 8, 3),
    (128, 128, 64, 8, 3),
    (128, 128, 32, 8, 4),
    (64, 128, 32, 4, 4),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="gpt-oss-20b")
    ap.add_argument("--tokens", default="1,16,64,2048")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    c = ModelConfig.preset(args.preset)
    e, h, i, k = c.num_experts, c.hidden_size, c.intermediate_size, c.experts_per_token
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)

    def packed(rows, cols):
        w = MXFP4Weight(e, rows, cols, device=dev)
        w.blocks = torch.randint(0, 256, w.blocks.shape, generator=g, device=dev, dtype=torch.uint8)
        w.scales = torch.randint(119, 123, w.scales.shape, generator=g, device=dev, dtype=torch.uint8)
        return w

    w1, w2 = packed(2 * i, h), packed(h, i)
    b1 = torch.randn(e, 2 * i, device=dev, dtype=torch.bfloat16) * 0.01
    b2 = torch.randn(e, h, device=dev, dtype=torch.bfloat16) * 0.01
    gate = torch.randn(e, h, device=dev, dtype=torch.bfloat16) * 0.02
    expert_bytes = w1.blocks[0].numel() + w1.scales[0].numel() + w2.blocks[0].numel() + w2.scales[0].numel()
    results = []
    for n in (int(v) for v in args.tokens.split(",")):
        t = torch.randn(n, h, device=dev, dtype=torch.bfloat16)
        logits = t @ gate.T
        default = moe._config(n * k, e, h, i)
        rows = []
        for cfg in [default] + [x for x in CANDIDATES if x != default]:
            if h % cfg[2] or i % cfg[2]:
                continue
            weights, _, pair, blocks = moe.route(logits, k, cfg[0])

            def fn(t=t, weights=weights, pair=pair, blocks=blocks, cfg=cfg):
                return moe._experts(t, weights, pair, blocks, k, w1, b1, w2, b2, 1.702, 7.0, t, cfg)

            try:
                ms = triton.testing.do_bench(fn, warmup=5, rep=30)
            except Exception as exc:  # e.g. out of shared memory for a big tile
                rows.append({"config": cfg, "error": type(exc).__name__})
                continue
            rows.append({"config": cfg, "ms": round(ms, 4)})
        ok = [r for r in rows if "ms" in r]
        best = min(ok, key=lambda r: r["ms"])
        touched = e * (1 - (1 - k / e) ** n)
        flops = 2 * n * k * 3 * h * i
        results.append(
            {
                "tokens": n,
                "default": default,
                "default_ms": ok[0]["ms"] if ok and ok[0]["config"] == default else None,
                "best": best,
                "best_gbs": round(touched * expert_bytes / (best["ms"] * 1e-3) / 1e9, 1),
                "best_tflops": round(flops / (best["ms"] * 1e-3) / 1e12, 1),
                "all": rows,
            }
        )
        print(f"tokens {n}: default {default} {results[-1]['default_ms']} ms, best {best}", flush=True)
    text = json.dumps({"gpu": torch.cuda.get_device_name(), "preset": args.preset, "results": results}, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
