"""The implementation the layers run with, chosen once for the model's device and kernel mode.

Three siblings with the same methods, so that :class:`~gptoss.model.attention.AttentionBlock`,
:class:`~gptoss.model.moe.MLPBlock` and :class:`~gptoss.model.transformer.Transformer` read straight-line:

* :class:`Reference` — plain torch, the ground truth every fast path is tested against;
* :class:`NativeCPU` — the native CPU kernels (:mod:`gptoss.kernels.cpu`): bf16 products read in place,
  attention over the block tables, grouped MXFP4 experts, residuals added in float32;
* :class:`Triton` — the Triton kernels (:mod:`gptoss.kernels`): fused RMSNorm, RoPE + KV store, paged
  attention, grouped MXFP4 experts.

All three read and write one cache layout, the paged blocks of :class:`~gptoss.model.paged_cache.PagedKVCache`.
:func:`select` picks one from the device and :func:`gptoss.kernels.mode` (``GPTOSS_KERNELS``; tests switch it
with :func:`gptoss.kernels.use`).
"""

from __future__ import annotations

import torch

from gptoss import kernels
from gptoss.model.paged_cache import PagedMeta


class Reference:
    name = "reference"

    def norm(self, norm, x: torch.Tensor) -> torch.Tensor:
        return norm(x)

    def linear(self, linear: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """``linear(x)`` in ``x``'s dtype."""
        return linear(x)

    def residual(self, x: torch.Tensor, linear: torch.nn.Linear, h: torch.Tensor) -> torch.Tensor:
        """``x + linear(h)``."""
        return x + linear(h)

    def rope_store(self, qkv, cos, sin, slot_mapping, k_pages, v_pages, hq: int, hk: int, d: int) -> torch.Tensor:
        from gptoss.model.attention import rope_store_reference

        return rope_store_reference(qkv, cos, sin, slot_mapping, k_pages, v_pages, hq, hk, d)

    def attend(self, q, k_pages, v_pages, meta: PagedMeta, group: str, sinks, sm_scale: float, window: int):
        from gptoss.model.attention import paged_attention_reference

        return paged_attention_reference(
            q,
            k_pages,
            v_pages,
            meta.block_tables[group],
            meta.cu_q,
            meta.q_lens,
            meta.kv_lens,
            sinks,
            sm_scale,
            window,
            meta.max_q_len,
        )

    def moe(self, block, x: torch.Tensor) -> torch.Tensor:
        return block.forward_reference(x)

    def logits(self, norm, unembedding, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits of the last hidden states."""
        return unembedding(norm(x)).float()


class NativeCPU(Reference):
    name = "cpu"

    def linear(self, linear, x):
        from gptoss.kernels import cpu

        return cpu.dense(linear, x).to(x.dtype)

    def residual(self, x, linear, h):
        from gptoss.kernels import cpu

        return (x.float() + cpu.dense(linear, h)).to(x.dtype)

    def attend(self, q, k_pages, v_pages, meta, group, sinks, sm_scale, window):
        from gptoss.kernels import cpu

        return cpu.paged_attention(
            q, k_pages, v_pages, meta.block_tables[group], meta.seq_index, meta.positions, sinks, sm_scale, window
        ).to(q.dtype)

    def moe(self, block, x):
        return block.forward_cpu(x)

    def logits(self, norm, unembedding, x):
        from gptoss.kernels import cpu

        return cpu.dense(unembedding, norm(x))


class Triton(Reference):
    name = "triton"

    def norm(self, norm, x):
        from gptoss.kernels.norm_rope import rms_norm

        return rms_norm(x, norm.scale, norm.eps)

    def rope_store(self, qkv, cos, sin, slot_mapping, k_pages, v_pages, hq, hk, d):
        from gptoss.kernels.norm_rope import rope_store

        return rope_store(qkv, cos, sin, slot_mapping, k_pages, v_pages, hq, hk, d)

    def attend(self, q, k_pages, v_pages, meta, group, sinks, sm_scale, window):
        from gptoss.kernels.attention import paged_attention

        return paged_attention(
            q,
            k_pages,
            v_pages,
            meta.block_tables[group],
            meta.cu_q,
            meta.q_lens,
            meta.kv_lens,
            sinks,
            sm_scale,
            window,
            meta.max_q_len,
        )

    def moe(self, block, x):
        return block.forward_triton(x)

    def logits(self, norm, unembedding, x):
        return unembedding(self.norm(norm, x)).float()


REFERENCE, NATIVE_CPU, TRITON = Reference(), NativeCPU(), Triton()


def select(device: torch.device) -> Reference:
    """The backend for a model on ``device`` under the current kernel mode."""
    probe = torch.empty(0, device=device)
    if kernels.active(probe):
        return TRITON
    if kernels.cpu_active(probe):
        return NATIVE_CPU
    return REFERENCE
