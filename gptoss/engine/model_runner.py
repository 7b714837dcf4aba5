"""Runs one scheduled step on the model: lays out the batch, extends the KV cache, returns logits.

Two caches (``kv_cache``):

* ``slot`` — :class:`~gptoss.model.cache.KVCache`, one fixed place per slot; the CPU default.
* ``paged`` — :class:`~gptoss.model.paged_cache.PagedKVCache`, blocks from a block manager; the default on
  CUDA, where the model then runs its Triton kernels (see :mod:`gptoss.kernels`) and decode steps replay
  CUDA graphs captured at a set of batch sizes (:mod:`gptoss.engine.cuda_graphs`).
"""

from __future__ import annotations

import torch

from gptoss.engine.distributed import MirroredCache, StepPlan
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
                 cuda_graphs: bool | None = None, decode_batch: int | None = None, channel=None):
        """``max_batch``: cache slots. ``kv_cache_tokens``: size of the paged cache's dense-layer pool
        (default: every slot can reach ``max_model_len``). ``cuda_graphs``: capture decode graphs (default:
        on CUDA with a paged cache), at batch sizes up to ``decode_batch``. ``channel``: rank 0's
        :class:`~gptoss.engine.distributed.StepChannel` under tensor parallelism (each step's plan and each
        change to the cache is sent to the other ranks; CUDA graphs are off there: not yet verified with
        collectives inside)."""
        self.model = model
        self.channel = channel
        if channel is not None and channel.world > 1:
            cuda_graphs = False
        self.max_model_len = max_model_len
        self.kind = choose_cache(kv_cache, model.device)
        self.graphs = None
        if self.kind == "slot":
            self.local_cache = KVCache(model.config, max_batch, max_model_len, device=model.device, dtype=model.dtype)
        else:
            num_blocks = None if kv_cache_tokens is None else 1 + -(-kv_cache_tokens // block_size)
            self.local_cache = PagedKVCache(model.config, max_batch, max_model_len, block_size=block_size,
                                            num_blocks=num_blocks, max_step_tokens=max(max_step_tokens, max_batch),
                                            device=model.device, dtype=model.dtype)
            if cuda_graphs is None:
                cuda_graphs = model.device.type == "cuda"
            if cuda_graphs:
                from gptoss.engine.cuda_graphs import DecodeGraphs

                self.graphs = DecodeGraphs(model, self.local_cache, max_batch=decode_batch or max_batch)
        # What the engine and the scheduler change: under tensor parallelism, changes reach every rank.
        self.cache = self.local_cache if channel is None else MirroredCache(self.local_cache, channel)

    @property
    def blocks(self) -> PagedKVCache | MirroredCache | None:
        """The block accounting the scheduler consults (paged cache only)."""
        return self.cache if self.kind == "paged" else None

    def run(self, work: list[tuple[Sequence, int]]) -> torch.Tensor:
        """Feed each sequence its next ``n`` uncached tokens; returns logits ``[B, V]`` of each one's last token.
        Under tensor parallelism (``channel``), the plan goes to the other ranks first."""
        plan = StepPlan([t for seq, n in work for t in seq.pending()[:n]], [s.slot for s, _ in work],
                        [s.num_cached for s, _ in work], [n for _, n in work])
        lora = getattr(self.model, "lora", None)
        if lora is not None and any(s.lora for s, _ in work):  # per-token adapters (gptoss.model.lora)
            if self.channel is not None:
                raise GptossError("LoRA adapters are not supported under tensor parallelism")
            with lora.active([(lora.slot(s.lora), n) for s, n in work]):
                logits = self.execute(plan, graphs=False)
        elif self.channel is None:
            logits = self.execute(plan)
        else:
            with self.channel.lock:
                self.channel.send(("step", plan))
                try:
                    logits = self.execute(plan)
                except Exception as exc:
                    if _is_collective_failure(exc):
                        raise self.channel.fail(exc) from exc
                    raise
        for seq, n in work:
            seq.num_cached += n
        return logits

    def execute(self, plan: StepPlan, graphs: bool = True) -> torch.Tensor:
        """Run one planned step over the cache (every rank runs it under tensor parallelism). ``graphs``:
        replay a captured decode graph where one fits (they hold the base model only: off with adapters)."""
        tokens = torch.tensor(plan.tokens, dtype=torch.long, device=self.model.device)
        if self.kind == "paged":
            cache = self.local_cache
            meta = cache.prepare(plan.slots, plan.starts, plan.lens)
            if graphs and self.graphs is not None and meta.max_q_len == 1 and self.graphs.supports(len(plan.lens)):
                logits = self.graphs.run(tokens, meta)
            else:
                logits = self.model.step_paged(tokens, meta, cache, logits_index=meta.last_index)
            cache.finish(meta)
            return logits
        batch = StepBatch.of(plan.slots, plan.starts, plan.lens, device=self.model.device)
        cache = self.local_cache
        return self.model.step(tokens, batch, cache, logits_index=batch.last_index)


def _is_collective_failure(exc: BaseException) -> bool:
    """A failed torch.distributed collective (a dead or hung peer), as opposed to an error of the request."""
    return isinstance(exc, getattr(torch.distributed, "DistBackendError", ())) or type(exc).__name__ in (
        "DistBackendError", "DistNetworkError", "DistError") or "Connection closed by peer" in str(exc) or \
        "Timed out" in str(exc)
