"""Grouped-query attention with biases, learned per-head sinks, and banded or dense causal masking."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from gptoss.model.config import ModelConfig
from gptoss.model.lora import lora_hook
from gptoss.model.norm import RMSNorm
from gptoss.model.paged_cache import PagedKVCache, PagedMeta
from gptoss.model.rope import RotaryEmbedding

if TYPE_CHECKING:
    from gptoss.model.backend import Reference


def sdpa_with_sinks(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor, mask: torch.Tensor, sm_scale: float
) -> torch.Tensor:
    """Reference attention. ``q [B, Tq, KVH, G, D]``, ``k, v [B, S, KVH, D]``, ``sinks [KVH*G]``,
    ``mask [B, Tq, S]`` (True = attend). Each head's softmax gets one extra logit, its sink, whose
    probability mass is dropped. Returns ``[B, Tq, KVH*G*D]``."""
    b, tq, kvh, g, d = q.shape
    scores = torch.einsum("bqhmd,bkhd->bhmqk", q.float(), k.float()) * sm_scale
    scores = scores.masked_fill(~mask[:, None, None, :, :], float("-inf"))
    sink = sinks.float().reshape(1, kvh, g, 1, 1).expand(b, kvh, g, tq, 1)
    weights = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    out = torch.einsum("bhmqk,bkhd->bqhmd", weights, v.float())
    return out.reshape(b, tq, kvh * g * d).to(q.dtype)


def rope_store_reference(
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
    """Split ``qkv [N, (HQ + 2 HK) * D]``, rotate queries and keys, write keys and values into the pages
    ``[blocks, block_size, HK, D]`` at cache rows ``slot_mapping [N]``; returns the queries ``[N, HQ, D]``.
    The reference that :func:`gptoss.kernels.norm_rope.rope_store` must match."""
    n = qkv.shape[0]
    hq, hk, d = num_heads, num_kv_heads, head_dim
    q = RotaryEmbedding.apply(qkv[:, : hq * d].reshape(n, hq, d), cos, sin)
    k = RotaryEmbedding.apply(qkv[:, hq * d : (hq + hk) * d].reshape(n, hk, d), cos, sin)
    v = qkv[:, (hq + hk) * d :].reshape(n, hk, d)
    k_pages.view(-1, hk, d)[slot_mapping] = k.to(k_pages.dtype)
    v_pages.view(-1, hk, d)[slot_mapping] = v.to(v_pages.dtype)
    return q


def paged_attention_reference(
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
) -> torch.Tensor:
    """Attention of new tokens over a paged cache that already holds their keys. ``q [N, HQ, D]`` (tokens
    sequence after sequence), pages ``[blocks, block_size, HK, D]``, ``block_table [B, max_blocks]``,
    ``cu_q / q_lens / kv_lens [B]`` (first new token, new tokens, keys after the step). Gathers each
    sequence's keys by position and runs :func:`sdpa_with_sinks`. Returns ``[N, HQ * D]``. The reference
    that :func:`gptoss.kernels.attention.paged_attention` must match."""
    n, hq, d = q.shape
    b = block_table.shape[0]
    bs, hk = k_pages.shape[1], k_pages.shape[2]
    if n == 0:
        return q.new_zeros(n, hq * d)
    s = int(kv_lens.max())
    kpos = torch.arange(s, device=q.device)
    rows = block_table[:, kpos // bs].long() * bs + kpos % bs  # [B, S]
    k = k_pages.reshape(-1, hk, d)[rows]
    v = v_pages.reshape(-1, hk, d)[rows]
    j = torch.arange(max_q_len, device=q.device)
    q_lens, kv_lens, cu_q = q_lens.long(), kv_lens.long(), cu_q.long()
    query_valid = j[None, :] < q_lens[:, None]  # [B, Tq]
    qpos = (kv_lens - q_lens)[:, None] + j[None, :]
    qp = q[(cu_q[:, None] + j[None, :]).clamp(max=n - 1)].view(b, max_q_len, hk, hq // hk, d)
    mask = query_valid[:, :, None] & (kpos[None, None, :] <= qpos[:, :, None])
    if window:
        mask &= (qpos[:, :, None] - kpos[None, None, :]) < window
    out = sdpa_with_sinks(qp, k.to(q.dtype), v.to(q.dtype), sinks, mask, sm_scale)
    return out[query_valid]


class AttentionBlock(torch.nn.Module):
    """Pre-norm attention with residual. Names mirror the original checkpoint: ``norm``, ``qkv``, ``sinks``, ``out``."""

    def __init__(self, config: ModelConfig, layer_idx: int, device=None, dtype=torch.float32):
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.window = config.window(layer_idx)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, device=device)
        qkv_dim = config.head_dim * (config.num_attention_heads + 2 * config.num_key_value_heads)
        self.qkv = torch.nn.Linear(config.hidden_size, qkv_dim, device=device, dtype=dtype)
        self.sinks = torch.nn.Parameter(torch.zeros(config.num_attention_heads, device=device, dtype=torch.float32))
        self.out = torch.nn.Linear(
            config.head_dim * config.num_attention_heads, config.hidden_size, device=device, dtype=dtype
        )
        self.sm_scale = 1 / math.sqrt(config.head_dim)

    def forward(
        self,
        x: torch.Tensor,
        meta: PagedMeta,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache: PagedKVCache,
        ops: Reference,
    ) -> torch.Tensor:
        """``x [N, hidden]`` flat tokens of the step ``meta``; writes their keys and values into ``cache``'s
        pages, attends over the pages, returns ``x`` plus the attention output."""
        group = cache.layer_group[self.layer_idx]
        kp, vp = cache.k[self.layer_idx], cache.v[self.layer_idx]
        cos, sin = rope
        lora = lora_hook(self)  # the step's LoRA adapters, if any: their deltas on the q, k, v and output products
        h = ops.norm(self.norm, x)
        qkv = ops.linear(self.qkv, h)
        if lora is not None:
            qkv = lora.qkv(h, qkv)
        q = ops.rope_store(
            qkv, cos, sin, meta.slot_mapping[group], kp, vp, self.num_heads, self.num_kv_heads, self.head_dim
        )
        out = ops.attend(q, kp, vp, meta, group, self.sinks, self.sm_scale, self.window)
        y = ops.residual(x, self.out, out)
        return y if lora is None else lora.out(out, y)
