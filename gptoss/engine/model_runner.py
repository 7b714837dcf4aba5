"""Runs one scheduled step on the model: lays out the batch, extends the KV cache, returns logits.

Two caches (``kv_cache``):

* ``slot`` — :class:`~gptoss.model.cache.KVCache`, one fixed place per slot; the CPU default.
* ``paged`` — :class:`~gptoss.model.paged_cache.PagedKVCache`, blocks from a block manager; the default on
  CUDA, where the model then runs its Triton kernels (see :mod:`gptoss.kernels`) and decode steps replay
  CUDA graphs captured at a set of batch sizes (:mod:`gptoss.engine.cuda_graphs`).
"""

from __future__ import annotations

import torch

from gptoss.engine.sequence import Sequence
from gptoss.errors import GptossError
from gptoss.model.cache import KVCache, StepBatch
from gptoss.model.paged_cache import PagedKVCache
from gptoss.model.transformer import Transformer


def choose_cache(kind: str, device: torch.device) -> str:
    if kind == "auto":
        return "paged" if device.type == "cuda" else "slot"
    if kind not in ("slot", "paged"):
        raise GptossError(f"unknown kv_cache {kind!r} (choose auto, slot or paged)")
    return kind


class ModelRunner:
    def __init__(self, model: Transformer, max_batch: int, max_model_len: int, kv_cache: str = "auto",
                 kv_cache_tokens: int | None = None, block_size: int = 16, max_step_tokens: int = 2048,
                 cuda_graphs: bool | None = None, decode_batch: int | None = None):
        """``max_batch``: cache slots. ``kv_cache_tokens``: size of the paged cache's dense-layer pool
        (default: every slot can reach ``max_model_len``). ``cuda_graphs``: capture decode graphs (default:
        on CUDA with a paged cache), at batch sizes up to ``decode_batch``."""
        self.model = model
        self.max_model_len = max_model_len
        self.kind = choose_cache(kv_cache, model.device)
        self.graphs = None
        if self.kind == "slot":
            self.cache = KVCache(model.config, max_batch, max_model_len, device=model.device, dtype=model.dtype)
            return
        num_blocks = None if kv_cache_tokens is None else 1 + -(-kv_cache_tokens // block_size)
        self.cache = PagedKVCache(model.config, max_batch, max_model_len, block_size=block_size, num_blocks=num_blocks,
                                  max_step_tokens=max(max_step_tokens, max_batch), device=model.device, dtype=model.dtype)
        if cuda_graphs is None:
            cuda_graphs = model.device.type == "cuda"
        if cuda_graphs:
            from gptoss.engine.cuda_graphs import DecodeGraphs

            self.graphs = DecodeGraphs(model, self.cache, max_batch=decode_batch or max_batch)

    @property
    def blocks(self) -> PagedKVCache | None:
        """The block accounting the scheduler consults (paged cache only)."""
        return self.cache if self.kind == "paged" else None

    def run(self, work: list[tuple[Sequence, int]]) -> torch.Tensor:
        """Feed each sequence its next ``n`` uncached tokens; returns logits ``[B, V]`` of each one's last token."""
        device = self.model.device
        tokens = torch.tensor([t for seq, n in work for t in seq.pending()[:n]], dtype=torch.long, device=device)
        slots, starts, lens = [s.slot for s, _ in work], [s.num_cached for s, _ in work], [n for _, n in work]
        if self.kind == "paged":
            meta = self.cache.prepare(slots, starts, lens)
            if self.graphs is not None and meta.max_q_len == 1 and self.graphs.supports(len(work)):
                logits = self.graphs.run(tokens, meta)
            else:
                logits = self.model.step_paged(tokens, meta, self.cache, logits_index=meta.last_index)
            self.cache.finish(meta)
        else:
            batch = StepBatch.of(slots, starts, lens, device=device)
            logits = self.model.step(tokens, batch, self.cache, logits_index=batch.last_index)
        for seq, n in work:
            seq.num_cached += n
        return logits
