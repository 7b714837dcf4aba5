"""Runs one scheduled step on the model: lays out the batch, extends the KV cache, returns logits."""

from __future__ import annotations

import torch

from gptoss.engine.sequence import Sequence
from gptoss.model.cache import KVCache, StepBatch
from gptoss.model.transformer import Transformer


class ModelRunner:
    def __init__(self, model: Transformer, max_batch: int, max_model_len: int):
        self.model = model
        self.max_model_len = max_model_len
        self.cache = KVCache(model.config, max_batch, max_model_len, device=model.device, dtype=model.dtype)

    def run(self, work: list[tuple[Sequence, int]]) -> torch.Tensor:
        """Feed each sequence its next ``n`` uncached tokens; returns logits ``[B, V]`` of each one's last token."""
        device = self.model.device
        tokens = [t for seq, n in work for t in seq.pending()[:n]]
        batch = StepBatch.of([s.slot for s, _ in work], [s.num_cached for s, _ in work], [n for _, n in work], device=device)
        logits = self.model.step(torch.tensor(tokens, dtype=torch.long, device=device), batch, self.cache,
                                 logits_index=batch.last_index)
        for seq, n in work:
            seq.num_cached += n
        return logits
