"""CUDA graphs of the decode step (every sequence appends one token) at a set of batch sizes.

A decode step of gpt-oss launches a few hundred small kernels; at batch 1 launching them costs more than
running them. Each captured graph replays the whole step — embedding, 24 or 36 layers of kernels,
unembedding — from fixed input buffers: token ids, positions, key counts, block tables and cache rows. A
batch of ``B`` sequences runs the smallest captured size ``>= B``; the padding rows attend to one key of
the null block and write into it (see :mod:`gptoss.model.paged_cache`), so they disturb nothing.

Only for CUDA and the paged cache with the Triton kernels (the path with no host synchronisation). If a
capture fails, the runner says so once and runs that step eagerly instead.
"""

from __future__ import annotations

import warnings

import torch

from gptoss import kernels
from gptoss.model.paged_cache import PagedKVCache, PagedMeta

DEFAULT_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


class DecodeGraphs:
    def __init__(self, model, cache: PagedKVCache, max_batch: int, sizes: tuple[int, ...] = DEFAULT_SIZES):
        self.model = model
        self.cache = cache
        self.sizes = sorted({b for b in sizes if b < max_batch} | {max_batch})
        self.max_batch = max_batch
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.failed = False
        self.enabled = model.device.type == "cuda" and kernels.active(model.unembedding.weight)
        dev = model.device
        b, width = max_batch, cache.max_blocks_per_seq
        self.tokens = torch.zeros(b, dtype=torch.long, device=dev)
        self.positions = torch.zeros(b, dtype=torch.long, device=dev)
        self.kv_lens = torch.ones(b, dtype=torch.long, device=dev)
        self.q_lens = torch.ones(b, dtype=torch.long, device=dev)
        self.cu_q = torch.arange(b, dtype=torch.long, device=dev)
        self.tables = {g: torch.zeros(b, width, dtype=torch.long, device=dev) for g in cache.groups}
        self.mapping = {g: torch.zeros(b, dtype=torch.long, device=dev) for g in cache.groups}

    def supports(self, batch: int) -> bool:
        return self.enabled and not self.failed and batch <= self.max_batch

    def _meta(self, b: int) -> PagedMeta:
        return PagedMeta(
            positions=self.positions[:b],
            cu_q=self.cu_q[:b],
            q_lens=self.q_lens[:b],
            kv_lens=self.kv_lens[:b],
            last_index=torch.arange(b, device=self.tokens.device),
            block_tables={g: t[:b] for g, t in self.tables.items()},
            slot_mapping={g: t[:b] for g, t in self.mapping.items()},
            max_q_len=1,
            seq_index=self.cu_q[:b],
        )

    def capture(self) -> None:
        """Capture every size, largest first so that the smaller graphs reuse its memory pool. The static
        inputs point every row at the null block, so warm-up and capture write nowhere that matters."""
        pool = None
        stream = torch.cuda.Stream(self.tokens.device)
        for b in sorted(self.sizes, reverse=True):
            meta = self._meta(b)
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # compile the Triton kernels for these shapes, warm the allocator
                    self.model.step_paged(self.tokens[:b], meta, self.cache)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                out = self.model.step_paged(self.tokens[:b], meta, self.cache)
            pool = graph.pool()
            self.graphs[b], self.outputs[b] = graph, out
        torch.cuda.synchronize()

    def run(self, tokens: torch.Tensor, meta: PagedMeta) -> torch.Tensor:
        """Logits ``[B, V]`` of a decode step that :meth:`PagedKVCache.prepare` described."""
        if not self.graphs:
            try:
                self.capture()
            except Exception as exc:  # keep serving, eagerly
                self.failed = True
                self.graphs.clear()
                self.outputs.clear()
                warnings.warn(
                    f"CUDA graph capture failed, decoding without graphs: {exc!r}", RuntimeWarning, stacklevel=2
                )
                return self.model.step_paged(tokens, meta, self.cache, logits_index=meta.last_index)
        n = tokens.numel()
        b = next(s for s in self.sizes if s >= n)
        self.tokens[:n].copy_(tokens)
        self.positions[:n].copy_(meta.positions)
        self.kv_lens[:n].copy_(meta.kv_lens)
        if b > n:
            self.tokens[n:b] = 0
            self.positions[n:b] = 0
            self.kv_lens[n:b] = 1
        for g in self.tables:
            width = meta.block_tables[g].shape[1]
            self.tables[g][:n, :width].copy_(meta.block_tables[g])
            self.mapping[g][:n].copy_(meta.slot_mapping[g])
            if b > n:
                self.tables[g][n:b, 0] = 0
                self.mapping[g][n:b] = 0
        self.graphs[b].replay()
        return self.outputs[b][:n]
