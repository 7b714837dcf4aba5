"""Time one layer's CPU attention for a chunk of new queries over a cached history (the reuse step of an agent
with prefix caching): the per-query kernel, the tiled kernel at several tile sizes, and torch's matmul over the
sequence's pages gathered by its block table (query tiles, sink in the softmax). gpt-oss shapes: 64 query heads,
8 kv heads, head dim 64, blocks of 16. Prints JSON (seconds, best of --repeat, and GFLOP/s of QK plus PV).

    python benchmarks/attention_reuse.py --queries 300 --cached 4000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from gptoss.kernels import cpu
from gptoss.kernels.cpu.chooser import cpu_identity


def gathered_matmul(q, k_pages, v_pages, table, pos, sinks, sm_scale, window, tile):
    """One sequence's queries over its pages gathered by position, in tiles of ``tile`` queries (torch matmul)."""
    n, hq, d = q.shape
    bs, hk = k_pages.shape[1], k_pages.shape[2]
    g = hq // hk
    s = int(pos.max()) + 1
    kpos = torch.arange(s)
    rows = table[0, kpos // bs] * bs + kpos % bs
    k = k_pages.reshape(-1, hk, d)[rows].float().permute(1, 2, 0)  # [HK, D, S]
    v = v_pages.reshape(-1, hk, d)[rows].float().transpose(0, 1)  # [HK, S, D]
    out = torch.empty(n, hq, d)
    for a in range(0, n, tile):
        qt = q[a : a + tile]
        t = qt.shape[0]
        hi = int(pos[a + t - 1]) + 1
        qh = qt.view(t, hk, g, d).permute(1, 0, 2, 3).reshape(hk, t * g, d)
        sc = torch.bmm(qh, k[:, :, :hi]).mul_(sm_scale).view(hk, t, g, hi)
        p = pos[a : a + t].view(1, t, 1, 1)
        mask = kpos[:hi].view(1, 1, 1, hi) > p
        if window:
            mask |= kpos[:hi].view(1, 1, 1, hi) <= p - window
        sc.masked_fill_(mask, float("-inf"))
        sk = sinks.view(hk, 1, g, 1).expand(hk, t, g, 1)
        m = torch.maximum(sc.amax(-1, keepdim=True), sk)
        e = (sc - m).exp_()
        denom = e.sum(-1, keepdim=True) + (sk - m).exp()
        o = torch.bmm(e.div_(denom).view(hk, t * g, hi), v[:, :hi])  # [HK, t*G, D]
        out[a : a + t] = o.view(hk, t, g, d).permute(1, 0, 2, 3).reshape(t, hq, d)
    return out.reshape(n, hq * d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--cached", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--window", type=int, default=0)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    ap.add_argument("--tiles", default="4,8,16,32")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--decode-batch", type=int, default=8, help="also time a decode step of this many sequences")
    args = ap.parse_args()
    cpu.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    hq, hk, d, bs = 64, 8, 64, 16
    n, total = args.queries, args.cached + args.queries
    width = -(-total // bs)
    g = torch.Generator().manual_seed(0)
    table = (torch.randperm(width, generator=g) + 1).view(1, width)
    k_pages = torch.randn(width + 1, bs, hk, d, generator=g).to(dtype)
    v_pages = torch.randn(width + 1, bs, hk, d, generator=g).to(dtype)
    q = torch.randn(n, hq, d, generator=g)
    sinks = torch.randn(hq, generator=g)
    seq = torch.zeros(n, dtype=torch.int64)
    pos = torch.arange(args.cached, total)
    scale = d**-0.5
    w = args.window
    keys = sum(min(int(p) + 1, w) if w else int(p) + 1 for p in pos)
    flop = 4 * hq * d * keys

    def best(fn):
        out = fn()
        ts = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return min(ts), out

    def tiled(tile: int, q=q, table=table, seq=seq, pos=pos) -> torch.Tensor:
        return cpu.paged_attention(q, k_pages, v_pages, table, seq, pos, sinks, scale, w, tile=tile)

    ref_t, ref = best(lambda: tiled(0))
    res = {
        "cpu": cpu_identity().split(" | ")[0],
        "isa": cpu.isa_name(),
        "load_average": os.getloadavg(),
        "threads": args.threads,
        "queries": n,
        "cached": args.cached,
        "window": w,
        "dtype": args.dtype,
        "gflop": round(flop / 1e9, 2),
        "per_query_s": round(ref_t, 4),
        "per_query_gflops": round(flop / ref_t / 1e9, 1),
    }
    for tile in [int(x) for x in args.tiles.split(",")]:
        t, out = best(lambda tile=tile: tiled(tile))
        err = float((out - ref).norm() / ref.norm())
        res[f"tiled{tile}_s"] = round(t, 4)
        res[f"tiled{tile}_gflops"] = round(flop / t / 1e9, 1)
        res[f"tiled{tile}_rel_err"] = float(f"{err:.2e}")
        t, out = best(lambda tile=tile: gathered_matmul(q, k_pages, v_pages, table, pos, sinks, scale, w, tile))
        err = float((out - ref).norm() / ref.norm())
        res[f"torch_matmul{tile}_s"] = round(t, 4)
        res[f"torch_matmul{tile}_rel_err"] = float(f"{err:.2e}")
    if args.decode_batch:  # one token of each of B sequences at the end of the history: the per-query kernel
        b = args.decode_batch
        dtab = table.repeat(b, 1)
        dseq, dpos = torch.arange(b), torch.full((b,), total - 1)
        dq = q[:b]
        for tile in (0, 16):
            t, _ = best(lambda tile=tile: tiled(tile, dq, dtab, dseq, dpos))
            res[f"decode_b{b}_tile{tile}_ms"] = round(t * 1e3, 3)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
