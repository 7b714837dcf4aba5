"""Attention with learned sinks over a paged KV cache, causal and banded; the reference is
:func:`gptoss.model.attention.paged_attention_reference` (same arguments, same result within bf16 tolerance).

The new tokens' keys and values are already in the pages (:func:`gptoss.kernels.norm_rope.rope_store`
writes them first), so one kernel serves chunked prefill over a cached prefix and plain prefill alike.

* Prefill (``_prefill_kernel``), flash-style: one program per (sequence, tile of queries, KV head). A tile
  packs ``BLOCK_M / G`` tokens times the ``G`` query heads that share the KV head, so each key/value tile
  loaded serves all of them (GQA). Keys are visited only from the band's first position (banded layers)
  to the tile's last query; the online softmax starts from the head's sink as an extra logit with a
  zero value (``m = sink, l = 1``), which is exactly "one more logit whose probability mass is dropped".
* Decode (``_decode_kernel`` + ``_decode_reduce_kernel``), split-K: every sequence has one query; the
  program for (sequence, KV head, split) covers a slice of the keys and writes a partial (max, sum,
  unnormalised output); the reduce merges the slices. Only split 0 carries the sink. With one split (banded
  layers, big batches) the program writes the output itself. Shapes depend only on
  the batch size, so the decode step can be captured in a CUDA graph.
"""

from __future__ import annotations

import functools
import math

import torch

from gptoss.kernels import check_device

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover
    triton = None

LOG2E = 1.4426950408889634


if triton is not None:

    @triton.jit
    def _prefill_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        o_ptr,
        table_ptr,
        cu_q_ptr,
        q_len_ptr,
        kv_len_ptr,
        sinks_ptr,
        qk_scale,
        table_stride,
        tiles_per_seq,
        HQ: tl.constexpr,
        HK: tl.constexpr,
        G: tl.constexpr,
        D: tl.constexpr,
        BS: tl.constexpr,
        WINDOW: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        pid = tl.program_id(0)
        h = tl.program_id(1)
        seq = pid // tiles_per_seq
        tile = pid % tiles_per_seq
        TOKENS: tl.constexpr = BLOCK_M // G
        q_len = tl.load(q_len_ptr + seq)
        if tile * TOKENS >= q_len:
            return
        kv_len = tl.load(kv_len_ptr + seq)
        cu = tl.load(cu_q_ptr + seq).to(tl.int64)
        start = kv_len - q_len
        r = tl.arange(0, BLOCK_M)
        t = tile * TOKENS + r // G
        head = h * G + r % G
        row_valid = t < q_len
        qpos = start + t
        d = tl.arange(0, D)
        q_off = ((cu + t)[:, None] * HQ + head[:, None]) * D + d[None, :]
        q = tl.load(q_ptr + q_off, mask=row_valid[:, None], other=0.0)
        m_i = tl.load(sinks_ptr + head).to(tl.float32) * 1.4426950408889634
        l_i = tl.full((BLOCK_M,), 1.0, dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, D), dtype=tl.float32)
        first_q = start + tile * TOKENS
        hi = tl.minimum(first_q + TOKENS, kv_len)  # one past the tile's last query position
        lo = 0
        if WINDOW > 0:
            lo = tl.maximum(first_q - WINDOW + 1, 0)
        lo = (lo // BLOCK_N) * BLOCK_N
        table = table_ptr + seq.to(tl.int64) * table_stride
        for k0 in range(lo, hi, BLOCK_N):
            kpos = k0 + tl.arange(0, BLOCK_N)
            kmask = kpos < hi
            blk = tl.load(table + kpos // BS, mask=kmask, other=0).to(tl.int64)
            krow = blk * BS + kpos % BS
            kt = tl.load(k_ptr + (krow[None, :] * HK + h) * D + d[:, None], mask=kmask[None, :], other=0.0)
            s = tl.dot(q, kt) * qk_scale
            allowed = kpos[None, :] <= qpos[:, None]
            if WINDOW > 0:
                allowed = allowed & ((qpos[:, None] - kpos[None, :]) < WINDOW)
            s = tl.where(allowed, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_ptr + (krow[:, None] * HK + h) * D + d[None, :], mask=kmask[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        out = acc / l_i[:, None]
        tl.store(o_ptr + q_off, out.to(o_ptr.dtype.element_ty), mask=row_valid[:, None])

    @triton.jit
    def _decode_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        o_ptr,
        po_ptr,
        pm_ptr,
        pl_ptr,
        table_ptr,
        kv_len_ptr,
        sinks_ptr,
        qk_scale,
        table_stride,
        HQ: tl.constexpr,
        HK: tl.constexpr,
        G: tl.constexpr,
        D: tl.constexpr,
        BS: tl.constexpr,
        WINDOW: tl.constexpr,
        SPLITS: tl.constexpr,
        BLOCK_G: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        seq = tl.program_id(0)
        h = tl.program_id(1)
        split = tl.program_id(2)
        kv_len = tl.load(kv_len_ptr + seq)
        lo = 0
        if WINDOW > 0:
            lo = tl.maximum(kv_len - WINDOW, 0)
        chunk = tl.cdiv(tl.cdiv(kv_len - lo, SPLITS), BLOCK_N) * BLOCK_N
        s_lo = lo + split * chunk
        s_hi = tl.minimum(s_lo + chunk, kv_len)
        g = tl.arange(0, BLOCK_G)
        gmask = g < G
        head = h * G + g
        d = tl.arange(0, D)
        q = tl.load(q_ptr + (seq.to(tl.int64) * HQ + head[:, None]) * D + d[None, :], mask=gmask[:, None], other=0.0)
        sink = tl.load(sinks_ptr + head, mask=gmask, other=0.0).to(tl.float32) * 1.4426950408889634
        if split == 0:
            m_i = sink
            l_i = tl.full((BLOCK_G,), 1.0, dtype=tl.float32)
        else:
            m_i = tl.full((BLOCK_G,), float("-inf"), dtype=tl.float32)
            l_i = tl.zeros((BLOCK_G,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_G, D), dtype=tl.float32)
        table = table_ptr + seq.to(tl.int64) * table_stride
        for k0 in range(s_lo, s_hi, BLOCK_N):
            kpos = k0 + tl.arange(0, BLOCK_N)
            kmask = kpos < s_hi
            blk = tl.load(table + kpos // BS, mask=kmask, other=0).to(tl.int64)
            krow = blk * BS + kpos % BS
            kt = tl.load(k_ptr + (krow[None, :] * HK + h) * D + d[:, None], mask=kmask[None, :], other=0.0)
            s = tl.dot(q, kt) * qk_scale
            s = tl.where(kmask[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_ptr + (krow[:, None] * HK + h) * D + d[None, :], mask=kmask[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        if SPLITS == 1:  # the whole answer: normalise and write it, no reduce needed
            out = acc / l_i[:, None]
            tl.store(
                o_ptr + (seq.to(tl.int64) * HQ + head[:, None]) * D + d[None, :],
                out.to(o_ptr.dtype.element_ty),
                mask=gmask[:, None],
            )
        else:
            part = (seq.to(tl.int64) * HQ + head) * SPLITS + split
            tl.store(pm_ptr + part, m_i, mask=gmask)
            tl.store(pl_ptr + part, l_i, mask=gmask)
            tl.store(po_ptr + part[:, None] * D + d[None, :], acc, mask=gmask[:, None])

    @triton.jit
    def _decode_reduce_kernel(
        po_ptr, pm_ptr, pl_ptr, o_ptr, HQ: tl.constexpr, D: tl.constexpr, SPLITS: tl.constexpr, BLOCK_S: tl.constexpr
    ):
        seq = tl.program_id(0).to(tl.int64)
        head = tl.program_id(1)
        s = tl.arange(0, BLOCK_S)
        smask = s < SPLITS
        part = (seq * HQ + head) * SPLITS + s
        m = tl.load(pm_ptr + part, mask=smask, other=float("-inf"))
        lsum = tl.load(pl_ptr + part, mask=smask, other=0.0)
        big = tl.max(m, axis=0)
        w = tl.where(smask, tl.exp2(m - big), 0.0)
        d = tl.arange(0, D)
        acc = tl.load(po_ptr + part[:, None] * D + d[None, :], mask=smask[:, None], other=0.0)
        out = tl.sum(acc * w[:, None], axis=0) / tl.sum(lsum * w, axis=0)
        tl.store(o_ptr + (seq * HQ + head) * D + d, out.to(o_ptr.dtype.element_ty))


@functools.cache
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def decode_splits(batch: int, num_kv_heads: int, window: int, device: torch.device) -> int:
    """How many key slices a decode program pair (sequence, KV head) is split into: enough programs to
    fill the GPU twice over. Depends only on static shapes (CUDA-graph safe)."""
    if window or device.type != "cuda":
        return 1
    sms = _num_sms(device.index if device.index is not None else torch.cuda.current_device())
    return max(1, min(16, math.ceil(2 * sms / max(1, batch * num_kv_heads))))


def paged_attention(
    q: torch.Tensor,
    k_pages: torch.Tensor,
    v_pages: torch.Tensor,
    block_table: torch.Tensor,
    cu_q: torch.Tensor,
    q_lens: torch.Tensor,
    kv_lens: torch.Tensor,
    sinks: torch.Tensor,
    sm_scale: float,
    window: int,
    max_q_len: int,
    *,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Same arguments and result as :func:`gptoss.model.attention.paged_attention_reference`:
    ``q [N, HQ, D]`` (new tokens, sequence after sequence), pages ``[blocks, block_size, HK, D]`` already
    holding the new keys, ``block_table [B, max_blocks]``, ``cu_q / q_lens / kv_lens [B]`` (integers)
    (first token, new tokens, keys after the step), ``sinks [HQ]``. Returns ``[N, HQ * D]``.
    ``num_splits`` overrides the decode split count (tests)."""
    check_device("paged_attention", q, k_pages)
    n, hq, d = q.shape
    hk = k_pages.shape[2]
    bs = k_pages.shape[1]
    g = hq // hk
    b = block_table.shape[0]
    out = torch.empty(n, hq, d, dtype=q.dtype, device=q.device)
    if n == 0:
        return out.view(n, hq * d)
    if d & (d - 1) or d < 16:
        raise ValueError(f"paged_attention: head_dim {d} must be a power of two >= 16")
    q = q.contiguous()
    qk_scale = float(sm_scale) * LOG2E
    if max_q_len == 1 and n == b:
        block_g = max(16, triton.next_power_of_2(g))
        splits = num_splits or decode_splits(b, hk, window, q.device)
        parts = b * hq * splits if splits > 1 else 1
        po = torch.empty(parts, d, dtype=torch.float32, device=q.device)
        pm = torch.empty(parts, dtype=torch.float32, device=q.device)
        pl = torch.empty_like(pm)
        _decode_kernel[(b, hk, splits)](
            q,
            k_pages,
            v_pages,
            out,
            po,
            pm,
            pl,
            block_table,
            kv_lens,
            sinks,
            qk_scale,
            block_table.stride(0),
            HQ=hq,
            HK=hk,
            G=g,
            D=d,
            BS=bs,
            WINDOW=window,
            SPLITS=splits,
            BLOCK_G=block_g,
            BLOCK_N=32,
            num_warps=4,
            num_stages=3,
        )
        if splits > 1:
            _decode_reduce_kernel[(b, hq)](
                po, pm, pl, out, HQ=hq, D=d, SPLITS=splits, BLOCK_S=triton.next_power_of_2(splits), num_warps=1
            )
        return out.view(n, hq * d)
    if g & (g - 1):
        raise ValueError(f"paged_attention: query heads per KV head ({g}) must be a power of two")
    block_m = max(16, g, min(128, triton.next_power_of_2(max_q_len * g)))
    tiles = triton.cdiv(max_q_len, block_m // g)
    _prefill_kernel[(b * tiles, hk)](
        q,
        k_pages,
        v_pages,
        out,
        block_table,
        cu_q,
        q_lens,
        kv_lens,
        sinks,
        qk_scale,
        block_table.stride(0),
        tiles,
        HQ=hq,
        HK=hk,
        G=g,
        D=d,
        BS=bs,
        WINDOW=window,
        BLOCK_M=block_m,
        BLOCK_N=64 if d <= 64 else 32,
        num_warps=4 if block_m <= 64 else 8,
        num_stages=2,
    )
    return out.view(n, hq * d)
