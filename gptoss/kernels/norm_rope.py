"""Fused RMSNorm, and RoPE fused with the paged KV-cache write.

* :func:`rms_norm` matches :class:`gptoss.model.norm.RMSNorm` (float32 statistics, float32 scale, one
  rounding to the input dtype) in one pass over each row.
* :func:`rope_store` matches :func:`gptoss.model.attention.rope_store_reference`: it reads the ``qkv``
  projection once, rotates the query and key heads (halves, not interleaved pairs), returns the queries and
  writes the keys and values straight into their cache pages at ``slot_mapping`` — instead of separate
  rotation, concatenation and scatter passes.
"""

from __future__ import annotations

import torch

from gptoss.kernels import check_device

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover
    triton = None


if triton is not None:

    @triton.jit
    def _rms_norm_kernel(x_ptr, scale_ptr, out_ptr, H, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < H
        x = tl.load(x_ptr + row * H + cols, mask=mask, other=0.0).to(tl.float32)
        inv = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / H + eps)
        scale = tl.load(scale_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * H + cols, (x * inv * scale).to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _rope_store_kernel(
        qkv_ptr,
        cos_ptr,
        sin_ptr,
        slot_ptr,
        q_ptr,
        k_ptr,
        v_ptr,
        HQ: tl.constexpr,
        HK: tl.constexpr,
        D: tl.constexpr,
        HALF: tl.constexpr,
        BLOCK_HALF: tl.constexpr,
    ):
        tok = tl.program_id(0).to(tl.int64)
        head = tl.program_id(1)
        i = tl.arange(0, BLOCK_HALF)
        mask = i < HALF
        src = qkv_ptr + tok * (HQ + 2 * HK) * D + head * D
        x1 = tl.load(src + i, mask=mask, other=0.0)
        x2 = tl.load(src + HALF + i, mask=mask, other=0.0)
        if head < HQ + HK:
            c = tl.load(cos_ptr + tok * HALF + i, mask=mask, other=0.0)
            s = tl.load(sin_ptr + tok * HALF + i, mask=mask, other=0.0)
            a = x1.to(tl.float32)
            b = x2.to(tl.float32)
            o1 = a * c - b * s
            o2 = b * c + a * s
            if head < HQ:
                dst = q_ptr + (tok * HQ + head) * D
            else:
                slot = tl.load(slot_ptr + tok).to(tl.int64)
                dst = k_ptr + (slot * HK + head - HQ) * D
            tl.store(dst + i, o1.to(dst.dtype.element_ty), mask=mask)
            tl.store(dst + HALF + i, o2.to(dst.dtype.element_ty), mask=mask)
        else:
            slot = tl.load(slot_ptr + tok).to(tl.int64)
            dst = v_ptr + (slot * HK + head - HQ - HK) * D
            tl.store(dst + i, x1.to(dst.dtype.element_ty), mask=mask)
            tl.store(dst + HALF + i, x2.to(dst.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``x [..., H]`` -> ``x / rms(x) * scale`` in float32, returned in ``x.dtype``."""
    check_device("rms_norm", x)
    h = x.shape[-1]
    flat = x.reshape(-1, h).contiguous()
    out = torch.empty_like(flat)
    if flat.shape[0]:
        _rms_norm_kernel[(flat.shape[0],)](
            flat,
            scale.contiguous(),
            out,
            h,
            float(eps),
            BLOCK=triton.next_power_of_2(h),
            num_warps=8 if h >= 2048 else 4,
        )
    return out.view(x.shape)


def rope_store(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_pages: torch.Tensor,
    v_pages: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
) -> torch.Tensor:
    """``qkv [N, (HQ + 2 HK) * D]``, ``cos, sin [N, D/2]`` (float32), ``slot_mapping [N]`` (cache row of each
    token: ``block * block_size + offset``), pages ``[blocks, block_size, HK, D]``. Writes rotated keys and
    the values into the pages; returns the rotated queries ``[N, HQ, D]``."""
    check_device("rope_store", qkv, k_pages)
    n = qkv.shape[0]
    q = torch.empty(n, num_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    if n:
        half = head_dim // 2
        _rope_store_kernel[(n, num_heads + 2 * num_kv_heads)](
            qkv.contiguous(),
            cos.contiguous(),
            sin.contiguous(),
            slot_mapping,
            q,
            k_pages,
            v_pages,
            HQ=num_heads,
            HK=num_kv_heads,
            D=head_dim,
            HALF=half,
            BLOCK_HALF=triton.next_power_of_2(half),
            num_warps=1,
        )
    return q
