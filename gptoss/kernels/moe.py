"""Mixture-of-experts kernels over MXFP4 expert weights; the reference is
:func:`gptoss.model.moe.experts_reference` (same arguments, same result within bf16 tolerance).

Three steps, all free of host synchronisation (so a decode step can be captured in a CUDA graph):

1. :func:`route` (one Triton program for decode-sized batches, else torch ops and :func:`sort_by_expert`):
   top-k and softmax of the router logits, then the ``N*k`` (token, expert) pairs sorted by expert, each
   expert's run padded to a multiple of ``BLOCK_M`` rows; ``block_expert[b]`` names the expert of row
   block ``b`` (``E`` for unused blocks at the end of the fixed-size buffer).
2. ``_mlp1_kernel``: one program per (row block, column tile) multiplies the gathered token rows by the
   block's expert ``mlp1`` weight, unpacking E2M1 codes and E8M0 scales in registers (never a dequantized
   copy in memory), adds the bias and applies the clamped SwiGLU to the interleaved gate/linear columns.
   Even and odd input columns meet the low and high nibbles of each byte in two ``tl.dot`` calls, so the
   packed bytes need no re-interleaving.
3. ``_mlp2_kernel``: the same for ``mlp2``, adding its bias and multiplying by each pair's routing weight;
   ``_combine_kernel`` then sums each token's ``k`` rows in float32 (a fixed order: deterministic, no
   atomics) and adds the residual.
"""

from __future__ import annotations

import functools
import os

import torch

from gptoss.kernels import check_device

try:  # Triton is optional: this module imports without it and raises when a kernel is called.
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - exercised only where Triton is missing
    triton = None


def sort_by_expert(indices: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``indices [N, k]`` -> ``(sorted_pair [P_max] int32, block_expert [P_max / block_m] int32)``.

    ``sorted_pair`` lists pair ids ``token * k + rank`` grouped by expert, each group padded with -1 to a
    multiple of ``block_m``; ``P_max = N*k + min(E, N*k) * (block_m - 1)`` rounded up to ``block_m`` bounds
    the padded length whatever the routing, so shapes depend only on ``N``."""
    flat = indices.reshape(-1).to(torch.int64)
    p = flat.numel()
    device = flat.device
    p_max = -(-(p + min(num_experts, p) * (block_m - 1)) // block_m) * block_m
    counts = torch.zeros(num_experts, dtype=torch.int64, device=device).scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    pad_end = torch.cumsum(padded, 0)
    pad_start = pad_end - padded
    count_start = torch.cumsum(counts, 0) - counts
    order = torch.argsort(flat, stable=True)
    expert_sorted = flat[order]
    rank = torch.arange(p, device=device) - count_start[expert_sorted]
    dest = pad_start[expert_sorted] + rank
    sorted_pair = torch.full((p_max,), -1, dtype=torch.int32, device=device)
    sorted_pair[dest] = order.to(torch.int32)
    block_start = torch.arange(0, p_max, block_m, device=device)
    block_expert = torch.searchsorted(pad_end, block_start, right=True).to(torch.int32)
    return sorted_pair, block_expert


@functools.cache
def _config(pairs: int, experts: int, hidden: int, inter: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) by rows per expert. Override for tuning with
    ``GPTOSS_MOE_CONFIG=BM,BN,BK,warps,stages``."""
    env = os.environ.get("GPTOSS_MOE_CONFIG")
    if env:
        bm, bn, bk, warps, stages = (int(v) for v in env.split(","))
        return bm, bn, bk, warps, stages
    per_expert = pairs / experts
    bk = 64 if hidden % 64 == 0 and inter % 64 == 0 else 32
    # Chosen without a GPU: each compiles for sm_90 without register spills (checked with cuobjdump).
    if per_expert <= 16:  # decode: memory bound, many narrow column tiles to spread the weight reads
        return 16, 32, bk, 4, 4
    if per_expert <= 48:
        return 32, 64, bk, 8, 3
    if per_expert <= 256:
        return 64, 64, bk, 8, 3
    return 128, 64, bk, 8, 3


if triton is not None:

    @triton.jit
    def _e2m1(code):
        """E2M1 codes (int32, 0..15) -> float32, by building the float's bits."""
        sign = (code & 8) << 28
        e = (code >> 1) & 3
        m = code & 1
        bits = tl.where(e != 0, ((e + 126) << 23) | (m << 22), m * (126 << 23))
        return (bits | sign).to(tl.float32, bitcast=True)

    @triton.jit
    def _dequant_pair(w_ptr, s_ptr, rows, rmask, j, ROW_BYTES, ROW_GROUPS):
        """Bytes ``j`` of weight ``rows``: (low nibbles, high nibbles) as float32 ``[rows, bytes]``."""
        b = tl.load(w_ptr + rows[:, None] * ROW_BYTES + j[None, :], mask=rmask[:, None], other=0).to(tl.int32)
        s = tl.load(s_ptr + rows[:, None] * ROW_GROUPS + (j // 16)[None, :], mask=rmask[:, None], other=0).to(tl.int32)
        scale = (s << 23).to(tl.float32, bitcast=True)  # E8M0: 2**(s - 127)
        return _e2m1(b & 15) * scale, _e2m1(b >> 4) * scale

    @triton.jit
    def _mlp1_kernel(
        x_ptr,
        pair_ptr,
        block_expert_ptr,
        w_ptr,
        s_ptr,
        bias_ptr,
        h_ptr,
        H,
        inter,
        E,
        alpha,
        limit,
        K: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        e = tl.load(block_expert_ptr + pid_m)
        if e >= E:
            return
        e64 = e.to(tl.int64)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        pair = tl.load(pair_ptr + rows)
        valid = pair >= 0
        tok = tl.where(valid, pair // K, 0).to(tl.int64)
        n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = n < inter
        row_bytes = H // 2
        row_groups = H // 32
        w_base = w_ptr + e64 * (2 * inter) * row_bytes
        s_base = s_ptr + e64 * (2 * inter) * row_groups
        jj = tl.arange(0, BLOCK_K // 2)
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_l = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, H, BLOCK_K):
            x_even = tl.load(x_ptr + tok[:, None] * H + (k0 + 2 * jj)[None, :], mask=valid[:, None], other=0.0)
            x_odd = tl.load(x_ptr + tok[:, None] * H + (k0 + 2 * jj + 1)[None, :], mask=valid[:, None], other=0.0)
            j = k0 // 2 + jj
            g_lo, g_hi = _dequant_pair(w_base, s_base, 2 * n, nmask, j, row_bytes, row_groups)
            acc_g = tl.dot(x_even, tl.trans(g_lo.to(x_even.dtype)), acc_g)
            acc_g = tl.dot(x_odd, tl.trans(g_hi.to(x_even.dtype)), acc_g)
            l_lo, l_hi = _dequant_pair(w_base, s_base, 2 * n + 1, nmask, j, row_bytes, row_groups)
            acc_l = tl.dot(x_even, tl.trans(l_lo.to(x_even.dtype)), acc_l)
            acc_l = tl.dot(x_odd, tl.trans(l_hi.to(x_even.dtype)), acc_l)
        bias = bias_ptr + e64 * (2 * inter)
        g = acc_g + tl.load(bias + 2 * n, mask=nmask, other=0.0).to(tl.float32)[None, :]
        lin = acc_l + tl.load(bias + 2 * n + 1, mask=nmask, other=0.0).to(tl.float32)[None, :]
        g = tl.minimum(g, limit)
        lin = tl.minimum(tl.maximum(lin, -limit), limit)
        out = g * tl.sigmoid(alpha * g) * (lin + 1.0)
        tl.store(
            h_ptr + rows[:, None].to(tl.int64) * inter + n[None, :], out.to(h_ptr.dtype.element_ty), mask=nmask[None, :]
        )

    @triton.jit
    def _mlp2_kernel(
        h_ptr,
        pair_ptr,
        block_expert_ptr,
        w_ptr,
        s_ptr,
        bias_ptr,
        route_ptr,
        y_ptr,
        H,
        inter,
        E,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        e = tl.load(block_expert_ptr + pid_m)
        if e >= E:
            return
        e64 = e.to(tl.int64)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        pair = tl.load(pair_ptr + rows)
        valid = pair >= 0
        n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = n < H
        row_bytes = inter // 2
        row_groups = inter // 32
        w_base = w_ptr + e64 * H * row_bytes
        s_base = s_ptr + e64 * H * row_groups
        jj = tl.arange(0, BLOCK_K // 2)
        h_rows = h_ptr + rows[:, None].to(tl.int64) * inter
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, inter, BLOCK_K):
            h_even = tl.load(h_rows + (k0 + 2 * jj)[None, :], mask=valid[:, None], other=0.0)
            h_odd = tl.load(h_rows + (k0 + 2 * jj + 1)[None, :], mask=valid[:, None], other=0.0)
            w_lo, w_hi = _dequant_pair(w_base, s_base, n, nmask, k0 // 2 + jj, row_bytes, row_groups)
            acc = tl.dot(h_even, tl.trans(w_lo.to(h_even.dtype)), acc)
            acc = tl.dot(h_odd, tl.trans(w_hi.to(h_even.dtype)), acc)
        acc += tl.load(bias_ptr + e64 * H + n, mask=nmask, other=0.0).to(tl.float32)[None, :]
        route = tl.load(route_ptr + tl.where(valid, pair, 0), mask=valid, other=0.0).to(tl.float32)
        out = acc * route[:, None]
        dst = y_ptr + tl.where(valid, pair, 0)[:, None].to(tl.int64) * H + n[None, :]
        tl.store(dst, out.to(y_ptr.dtype.element_ty), mask=valid[:, None] & nmask[None, :])

    @triton.jit
    def _combine_kernel(y_ptr, res_ptr, out_ptr, H, K: tl.constexpr, HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
        tok = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < H
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for j in range(K):
            acc += tl.load(y_ptr + (tok * K + j) * H + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RES:
            acc += tl.load(res_ptr + tok * H + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + tok * H + cols, acc.to(out_ptr.dtype.element_ty), mask=mask)


if triton is not None:

    @triton.jit
    def _route_kernel(
        logits_ptr,
        w_ptr,
        idx_ptr,
        pair_ptr,
        block_expert_ptr,
        N,
        E,
        P_MAX,
        NUM_BLOCKS,
        K: tl.constexpr,
        BM: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_E: tl.constexpr,
        BLOCK_PMAX: tl.constexpr,
        BLOCK_NB: tl.constexpr,
    ):
        """One program: top-k by repeated arg-max, softmax over the chosen logits, then the pairs counted
        per expert, each expert's run padded to BM, and every pair written to its padded row."""
        n = tl.arange(0, BLOCK_N)
        e = tl.arange(0, BLOCK_E)
        kk = tl.arange(0, BLOCK_K)
        nmask = n < N
        emask = e < E
        x = tl.load(
            logits_ptr + n[:, None] * E + e[None, :], mask=nmask[:, None] & emask[None, :], other=float("-inf")
        ).to(tl.float32)
        top_e = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.int32)
        top_v = tl.full((BLOCK_N, BLOCK_K), float("-inf"), dtype=tl.float32)
        for j in tl.static_range(K):
            best = tl.max(x, axis=1)
            arg = tl.min(tl.where(x == best[:, None], e[None, :], BLOCK_E), axis=1)  # lowest index among ties
            top_e = tl.where(kk[None, :] == j, arg[:, None], top_e)
            top_v = tl.where(kk[None, :] == j, best[:, None], top_v)
            x = tl.where(e[None, :] == arg[:, None], float("-inf"), x)
        kmask = kk < K
        valid2 = nmask[:, None] & kmask[None, :]
        top_max = tl.where(nmask, tl.max(top_v, axis=1), 0.0)  # padded rows hold only -inf
        ex = tl.where(valid2, tl.exp(top_v - top_max[:, None]), 0.0)
        w = ex / tl.maximum(tl.sum(ex, axis=1), 1e-30)[:, None]
        tl.store(w_ptr + n[:, None] * K + kk[None, :], w, mask=valid2)
        tl.store(idx_ptr + n[:, None] * K + kk[None, :], top_e, mask=valid2)
        # pairs in (token, rank) order; invalid ones get expert BLOCK_E (matches no expert)
        pe = tl.reshape(tl.where(valid2, top_e, BLOCK_E), (BLOCK_N * BLOCK_K,))
        pid = tl.reshape(n[:, None] * K + kk[None, :], (BLOCK_N * BLOCK_K,))
        onehot = (pe[:, None] == e[None, :]).to(tl.int32)  # [P, E]
        counts = tl.sum(onehot, axis=0)
        padded = (counts + BM - 1) // BM * BM
        pad_end = tl.cumsum(padded, axis=0)
        pad_start = pad_end - padded
        rank = tl.sum(tl.cumsum(onehot, axis=0) * onehot, axis=1) - 1  # earlier pairs of the same expert
        dest = tl.sum(onehot * pad_start[None, :], axis=1) + rank
        r = tl.arange(0, BLOCK_PMAX)
        tl.store(pair_ptr + r, tl.full((BLOCK_PMAX,), -1, dtype=tl.int32), mask=r < P_MAX)
        tl.debug_barrier()
        tl.store(pair_ptr + dest, pid, mask=pe < E)
        b = tl.arange(0, BLOCK_NB)
        ended = (pad_end[None, :] <= (b * BM)[:, None]) & emask[None, :]
        tl.store(block_expert_ptr + b, tl.sum(ended.to(tl.int32), axis=1), mask=b < NUM_BLOCKS)


def route(logits: torch.Tensor, k: int, block_m: int):
    """Router logits ``[N, E]`` -> ``(weights [N, k] float32, indices [N, k], sorted_pair, block_expert)``:
    the top-``k`` experts of each token (best first), the softmax over their logits, and the pairs sorted by
    expert as :func:`sort_by_expert` lays them out. One Triton program when the batch is small (decode), so
    routing costs one launch; otherwise torch ops. Reference: :meth:`gptoss.model.moe.MLPBlock.route`
    followed by :func:`sort_by_expert`."""
    check_device("route", logits)
    n, e = logits.shape
    p = n * k
    p_max = -(-(p + min(e, p) * (block_m - 1)) // block_m) * block_m
    block_n, block_k, block_e = triton.next_power_of_2(max(n, 1)), triton.next_power_of_2(k), triton.next_power_of_2(e)
    if n == 0 or block_n * block_k * block_e > 32768 or block_n * block_e > 16384:
        top = torch.topk(logits, k=k, dim=-1, sorted=True)
        weights = torch.softmax(top.values.float(), dim=-1)
        return (weights, top.indices) + sort_by_expert(top.indices, e, block_m)
    weights = torch.empty(n, k, dtype=torch.float32, device=logits.device)
    indices = torch.empty(n, k, dtype=torch.int32, device=logits.device)
    sorted_pair = torch.empty(p_max, dtype=torch.int32, device=logits.device)
    block_expert = torch.empty(p_max // block_m, dtype=torch.int32, device=logits.device)
    _route_kernel[(1,)](
        logits.contiguous(),
        weights,
        indices,
        sorted_pair,
        block_expert,
        n,
        e,
        p_max,
        p_max // block_m,
        K=k,
        BM=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        BLOCK_E=block_e,
        BLOCK_PMAX=triton.next_power_of_2(p_max),
        BLOCK_NB=triton.next_power_of_2(p_max // block_m),
        num_warps=8,
    )
    return weights, indices, sorted_pair, block_expert


def moe_forward(
    t: torch.Tensor,
    router_logits: torch.Tensor,
    k: int,
    mlp1_weight,
    mlp1_bias: torch.Tensor,
    mlp2_weight,
    mlp2_bias: torch.Tensor,
    alpha: float = 1.702,
    limit: float = 7.0,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """The fast MoE from router logits: :func:`route` then the expert kernels. Equals routing with
    :meth:`MLPBlock.route` and :func:`gptoss.model.moe.experts_reference` (bf16 tolerance)."""
    check_device("moe_forward", t, mlp1_weight.blocks)
    cfg = _shape_config(t, k, mlp1_weight)
    weights, _, sorted_pair, block_expert = route(router_logits, k, cfg[0])
    experts = (mlp1_weight, mlp1_bias, mlp2_weight, mlp2_bias, alpha, limit)
    return _experts(t, weights, sorted_pair, block_expert, k, experts, residual, cfg)


def moe_experts(
    t: torch.Tensor,
    weights: torch.Tensor,
    indices: torch.Tensor,
    mlp1_weight,
    mlp1_bias: torch.Tensor,
    mlp2_weight,
    mlp2_bias: torch.Tensor,
    alpha: float = 1.702,
    limit: float = 7.0,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same arguments and result as :func:`gptoss.model.moe.experts_reference`: ``t [N, hidden]``, routing
    ``weights, indices [N, k]``, packed ``MXFP4Weight`` s (``.blocks``, ``.scales``) and biases."""
    check_device("moe_experts", t, mlp1_weight.blocks)
    k = indices.shape[1]
    cfg = _shape_config(t, k, mlp1_weight)
    sorted_pair, block_expert = sort_by_expert(indices, mlp1_weight.blocks.shape[0], cfg[0]) if len(t) else (None, None)
    experts = (mlp1_weight, mlp1_bias, mlp2_weight, mlp2_bias, alpha, limit)
    return _experts(t, weights, sorted_pair, block_expert, k, experts, residual, cfg)


def _shape_config(t: torch.Tensor, k: int, mlp1_weight) -> tuple:
    """The tile configuration for ``t [N, hidden]`` routed to ``k`` experts each of ``mlp1_weight``'s."""
    n_tok, hidden = t.shape
    num_experts, inter = mlp1_weight.blocks.shape[0], mlp1_weight.blocks.shape[1] // 2
    return _config(n_tok * k, num_experts, hidden, inter)


def _experts(t, weights, sorted_pair, block_expert, k, experts: tuple, residual, cfg) -> torch.Tensor:
    """Both expert products over tokens sorted by expert; ``experts``: the weights, biases, alpha and limit."""
    mlp1_weight, mlp1_bias, mlp2_weight, mlp2_bias, alpha, limit = experts
    n_tok, hidden = t.shape
    num_experts, inter = mlp1_weight.blocks.shape[0], mlp1_weight.blocks.shape[1] // 2
    if hidden % 32 or inter % 32:
        raise ValueError(f"moe_experts: hidden {hidden} and intermediate {inter} must be multiples of 32")
    out = torch.empty_like(t)
    if n_tok == 0:
        return out
    t = t.contiguous()
    bm, bn, bk, warps, stages = cfg
    h = torch.empty(sorted_pair.numel(), inter, dtype=t.dtype, device=t.device)
    grid1 = (block_expert.numel(), triton.cdiv(inter, bn))
    _mlp1_kernel[grid1](
        t,
        sorted_pair,
        block_expert,
        mlp1_weight.blocks,
        mlp1_weight.scales,
        mlp1_bias.contiguous(),
        h,
        hidden,
        inter,
        num_experts,
        float(alpha),
        float(limit),
        K=k,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_K=bk,
        num_warps=warps,
        num_stages=stages,
    )
    y = torch.empty(n_tok * k, hidden, dtype=t.dtype, device=t.device)
    grid2 = (block_expert.numel(), triton.cdiv(hidden, bn))
    _mlp2_kernel[grid2](
        h,
        sorted_pair,
        block_expert,
        mlp2_weight.blocks,
        mlp2_weight.scales,
        mlp2_bias.contiguous(),
        weights.reshape(-1).contiguous(),
        y,
        hidden,
        inter,
        num_experts,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_K=bk,
        num_warps=warps,
        num_stages=stages,
    )
    block = min(1024, triton.next_power_of_2(hidden))
    res = residual.contiguous() if residual is not None else y
    _combine_kernel[(n_tok, triton.cdiv(hidden, block))](
        y, res, out, hidden, K=k, HAS_RES=residual is not None, BLOCK=block
    )
    return out
