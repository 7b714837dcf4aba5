"""The description of one forward step over several sequences, and the KV cache it runs over.

There is one cache layout, the paged blocks of :class:`~gptoss.model.paged_cache.PagedKVCache`; ``KVCache``
builds one with room for every slot to reach ``max_len`` (what a caller that names sequences by slot and
never waits for blocks wants). Which slot a sequence uses is the engine's business; the model only reads
and writes the slots a :class:`StepBatch` names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gptoss.model.config import ModelConfig
from gptoss.model.paged_cache import PagedKVCache


def KVCache(
    config: ModelConfig,
    num_slots: int,
    max_len: int,
    device=None,
    dtype=torch.float32,  # noqa: N802
    block_size: int = 16,
) -> PagedKVCache:
    """A paged cache in which each of ``num_slots`` sequences can reach ``max_len`` positions."""
    return PagedKVCache(
        config, num_slots, max_len, block_size=block_size, max_step_tokens=max_len, device=device, dtype=dtype
    )


@dataclass
class StepBatch:
    """One forward step: sequence ``b`` appends ``lens[b]`` new tokens at positions ``starts[b]...``
    to cache slot ``slots[b]``. Tokens are passed flat, sequence after sequence."""

    slots: torch.Tensor  # [B] long
    starts: torch.Tensor  # [B] long, tokens already cached
    lens: torch.Tensor  # [B] long, new tokens

    @classmethod
    def single(cls, length: int, start: int = 0, slot: int = 0, device=None) -> "StepBatch":
        t = lambda v: torch.tensor([v], dtype=torch.long, device=device)  # noqa: E731
        return cls(t(slot), t(start), t(length))

    @classmethod
    def of(cls, slots: list[int], starts: list[int], lens: list[int], device=None) -> "StepBatch":
        t = lambda v: torch.tensor(v, dtype=torch.long, device=device)  # noqa: E731
        return cls(t(slots), t(starts), t(lens))

    @property
    def last_index(self) -> torch.Tensor:
        """``[B]`` flat index of each sequence's last new token."""
        return torch.cumsum(self.lens, 0) - 1
