"""Runs one scheduled step on the model: lays out the batch, extends the KV cache, returns logits.

One cache on every device: :class:`~gptoss.model.paged_cache.PagedKVCache`, blocks handed out as tokens
arrive from one pool that all sequences share, full blocks kept after their sequence ends for prefix reuse
(automatic prefix caching). On CUDA, decode steps replay CUDA graphs captured at a set of batch sizes
(:mod:`gptoss.engine.cuda_graphs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gptoss.engine.distributed import MirroredCache
from gptoss.engine.sequence import Sequence
from gptoss.errors import GptossError
from gptoss.model.paged_cache import PagedKVCache
from gptoss.model.transformer import Transformer

BLOCK_SIZE = 16


@dataclass
class StepPlan:
    """One model step: new ``tokens`` of sequences in cache ``slots`` at ``starts`` (under tensor parallelism,
    rank 0 decides it and sends it to the other ranks)."""

    tokens: list[int]
    slots: list[int]
    starts: list[int]
    lens: list[int]
    full: list[bool] = field(default_factory=list)  # per sequence: logits of every new token, not only the last


def check_cache_kind(kind: str) -> None:
    if kind not in ("auto", "paged"):
        raise GptossError(f"unknown kv_cache {kind!r}: every device runs the paged cache (choose auto or paged)")


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes one position takes in the cache over all layers (keys and values)."""
    return (
        config.num_hidden_layers
        * 2
        * config.num_key_value_heads
        * config.head_dim
        * torch.empty((), dtype=dtype).element_size()
    )


def default_kv_tokens(
    config, dtype: torch.dtype, device: torch.device, weight_bytes: int, max_batch: int, max_model_len: int
) -> int:
    """How many positions the pool holds when not told: every slot reaching ``max_model_len`` if memory
    allows, else what the memory left holds (on CUDA 80% of the GPU's free memory; on the CPU the smaller of
    70% of MemAvailable and the RAM beside the weights less 2 GiB), never less than 64 blocks. A prompt
    longer than the pool is refused in one line naming ``kv_cache_tokens``. Memory is taken only as blocks
    fill (see :mod:`gptoss.model.paged_cache`)."""
    want = max_batch * max_model_len
    per_token = kv_bytes_per_token(config, dtype)
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free * 0.8
    else:
        budget = _cpu_budget(weight_bytes)
    if budget is None:
        return want
    return int(max(min(want, budget // per_token), 64 * BLOCK_SIZE))


def _cpu_budget(weight_bytes: int) -> float | None:
    try:
        info = {}
        with open("/proc/meminfo") as f:
            for line in f:
                name, value = line.split(":", 1)
                info[name] = int(value.split()[0]) * 1024
        return min(info["MemAvailable"] * 0.7, info["MemTotal"] - weight_bytes - 2 * 2**30)
    except (OSError, KeyError, ValueError):
        return None


def runner_kwargs(
    max_batch: int = 8,
    max_model_len: int = 4096,
    max_prefill_tokens: int = 2048,
    kv_cache: str = "auto",
    kv_cache_tokens: int | None = None,
    cuda_graphs: bool | None = None,
    prefix_caching: bool = True,
) -> dict:
    """The :class:`ModelRunner` arguments of an :class:`~gptoss.engine.llm.LLMEngine` so configured (every
    tensor parallel rank builds the same runner)."""
    return dict(
        max_batch=max_batch,
        max_model_len=max_model_len,
        kv_cache=kv_cache,
        kv_cache_tokens=kv_cache_tokens,
        max_step_tokens=max_prefill_tokens,
        cuda_graphs=cuda_graphs,
        decode_batch=max_batch,
        prefix_caching=prefix_caching,
    )


class ModelRunner:
    def __init__(
        self,
        model: Transformer,
        max_batch: int,
        max_model_len: int,
        kv_cache: str = "auto",
        kv_cache_tokens: int | None = None,
        block_size: int = BLOCK_SIZE,
        max_step_tokens: int = 2048,
        cuda_graphs: bool | None = None,
        decode_batch: int | None = None,
        channel=None,
        prefix_caching: bool = True,
    ):
        """``max_batch``: cache slots. ``kv_cache_tokens``: positions the pool holds, shared by every sequence
        (default :func:`default_kv_tokens`). ``prefix_caching``: keep full blocks after their sequence ends and
        hand them to a new one with the same prefix. ``cuda_graphs``: capture decode graphs (default: on CUDA),
        at batch sizes up to ``decode_batch``. ``channel``: rank 0's
        :class:`~gptoss.engine.distributed.StepChannel` under tensor parallelism (each step's plan and each
        change to the cache is sent to the other ranks; CUDA graphs are off there: not yet verified with
        collectives inside)."""
        check_cache_kind(kv_cache)
        self.model = model
        self.channel = channel
        if channel is not None and channel.world > 1:
            cuda_graphs = False
        self.max_model_len = max_model_len
        self.kind = "paged"
        self.graphs = None
        if kv_cache_tokens is None:
            kv_cache_tokens = default_kv_tokens(
                model.config, model.dtype, model.device, model.memory_bytes()["total"], max_batch, max_model_len
            )
        if kv_cache_tokens < block_size:
            raise GptossError(f"kv_cache_tokens {kv_cache_tokens}: the cache needs at least one block of {block_size}")
        self.local_cache = PagedKVCache(
            model.config,
            max_batch,
            max_model_len,
            block_size=block_size,
            num_blocks=1 + -(-kv_cache_tokens // block_size),
            max_step_tokens=max(max_step_tokens, max_batch),
            device=model.device,
            dtype=model.dtype,
            prefix_caching=prefix_caching,
        )
        if cuda_graphs is None:
            cuda_graphs = model.device.type == "cuda"
        if cuda_graphs:
            from gptoss.engine.cuda_graphs import DecodeGraphs

            self.graphs = DecodeGraphs(model, self.local_cache, max_batch=decode_batch or max_batch)
        # What the engine and the scheduler change: under tensor parallelism, changes reach every rank.
        self.cache = self.local_cache if channel is None else MirroredCache(self.local_cache, channel)
        self.full_logits: list[torch.Tensor | None] | None = None  # of the last step (see execute)

    @property
    def blocks(self) -> PagedKVCache | MirroredCache:
        """The block accounting the scheduler consults."""
        return self.cache

    def run(self, work: list[tuple[Sequence, int]]) -> torch.Tensor:
        """Feed each sequence its next ``n`` uncached tokens; returns logits ``[B, V]`` of each one's last token.
        Under tensor parallelism (``channel``), the plan goes to the other ranks first."""
        full = [seq.wants_prompt_logits for seq, _ in work]
        plan = StepPlan(
            [t for seq, n in work for t in seq.pending()[:n]],
            [s.slot for s, _ in work],
            [s.num_cached for s, _ in work],
            [n for _, n in work],
            full if any(full) else [],
        )
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
        """Run one planned step over the cache (every rank runs it under tensor parallelism). Returns the
        logits of each sequence's last new token; for the sequences ``plan.full`` marks, the logits of all
        their new tokens are kept too, in ``full_logits`` (one entry per sequence: ``[n, V]`` or None).
        ``graphs``: replay a captured decode graph where one fits (they hold the base model only: off with
        adapters)."""
        tokens = torch.tensor(plan.tokens, dtype=torch.long, device=self.model.device)
        self.full_logits = None
        index, last = None, None
        if plan.full:  # the last row of each sequence, or all its rows; ``last`` picks the last rows back out
            rows, last, at = [], [], 0
            for n, full in zip(plan.lens, plan.full):
                rows += range(at, at + n) if full else [at + n - 1]
                last.append(len(rows) - 1)
                at += n
            index = torch.tensor(rows, dtype=torch.long, device=self.model.device)
        cache = self.local_cache
        meta = cache.prepare(plan.slots, plan.starts, plan.lens, plan.tokens)
        if (
            graphs
            and index is None
            and self.graphs is not None
            and meta.max_q_len == 1
            and self.graphs.supports(len(plan.lens))
        ):
            logits = self.graphs.run(tokens, meta)
        else:
            logits = self.model.step_paged(
                tokens, meta, cache, logits_index=meta.last_index if index is None else index
            )
        cache.finish(meta)
        if index is None:
            return logits
        self.full_logits = [
            logits[end - n + 1 : end + 1] if full else None for n, full, end in zip(plan.lens, plan.full, last)
        ]
        return logits[last]


def _is_collective_failure(exc: BaseException) -> bool:
    """A failed torch.distributed collective (a dead or hung peer), as opposed to an error of the request."""
    return (
        isinstance(exc, getattr(torch.distributed, "DistBackendError", ()))
        or type(exc).__name__ in ("DistBackendError", "DistNetworkError", "DistError")
        or "Connection closed by peer" in str(exc)
        or "Timed out" in str(exc)
    )
