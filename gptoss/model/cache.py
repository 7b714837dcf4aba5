"""KV storage and the description of one forward step over several sequences.

``KVCache`` holds, per layer, keys and values (after RoPE) for ``num_slots`` sequences. Dense layers keep
``max_len`` positions; banded layers keep only a ring of ``window`` positions (position ``p`` lives at
``p % window``), since older keys can never be attended to again. Which slot a sequence uses is the
engine's business; the model only reads and writes the slots a :class:`StepBatch` names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gptoss.model.config import ModelConfig


class KVCache:
    def __init__(self, config: ModelConfig, num_slots: int, max_len: int, device=None, dtype=torch.float32):
        self.config = config
        self.num_slots = num_slots
        self.max_len = max_len
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        for layer in range(config.num_hidden_layers):
            window = config.window(layer)
            length = min(window, max_len) if window else max_len
            shape = (num_slots, length, config.num_key_value_heads, config.head_dim)
            self.k.append(torch.zeros(shape, device=device, dtype=dtype))
            self.v.append(torch.zeros(shape, device=device, dtype=dtype))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        """Copy the first ``length`` positions of slot ``src`` into ``dst`` (prefix reuse)."""
        for layer in range(len(self.k)):
            window = self.config.window(layer)
            n = self.k[layer].shape[1] if window else length
            self.k[layer][dst, :n] = self.k[layer][src, :n]
            self.v[layer][dst, :n] = self.v[layer][src, :n]


@dataclass
class StepBatch:
    """One forward step: sequence ``b`` appends ``lens[b]`` new tokens at positions ``starts[b]...``
    to cache slot ``slots[b]``. Tokens are passed flat, sequence after sequence."""

    slots: torch.Tensor  # [B] long
    starts: torch.Tensor  # [B] long, tokens already cached
    lens: torch.Tensor  # [B] long, new tokens
    _masks: dict = field(default_factory=dict, repr=False)

    @classmethod
    def single(cls, length: int, start: int = 0, slot: int = 0, device=None) -> "StepBatch":
        t = lambda v: torch.tensor([v], dtype=torch.long, device=device)  # noqa: E731
        return cls(t(slot), t(start), t(length))

    @classmethod
    def of(cls, slots: list[int], starts: list[int], lens: list[int], device=None) -> "StepBatch":
        t = lambda v: torch.tensor(v, dtype=torch.long, device=device)  # noqa: E731
        return cls(t(slots), t(starts), t(lens))

    def __post_init__(self) -> None:
        device = self.lens.device
        self.batch_size = int(self.lens.numel())
        self.max_len = int(self.lens.max()) if self.batch_size else 0
        j = torch.arange(self.max_len, device=device)
        self.query_valid = j[None, :] < self.lens[:, None]  # [B, Tq]
        self.query_pos = self.starts[:, None] + j[None, :]  # [B, Tq]
        self.positions = self.query_pos[self.query_valid]  # [N] flat
        offsets = torch.cumsum(self.lens, 0) - self.lens
        self.pad_index = (offsets[:, None] + j[None, :]).clamp(max=max(int(self.lens.sum()) - 1, 0))  # [B, Tq]
        self.token_seq = torch.repeat_interleave(torch.arange(self.batch_size, device=device), self.lens)  # [N]
        self.last_index = offsets + self.lens - 1  # [B] flat index of each sequence's last new token

    def flat_meta(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per flat token: its cache slot, position, its sequence's first new position, and the flat index of
        its sequence's first new token (what :func:`gptoss.kernels.cpu.attention` reads)."""
        if "flat" not in self._masks:
            seq = self.token_seq
            offsets = torch.cumsum(self.lens, 0) - self.lens
            self._masks["flat"] = (self.slots[seq], self.positions, self.starts[seq], offsets[seq])
        return self._masks["flat"]

    def cached_positions(self, length: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions ``[B, length]`` held by each sequence's cache rows, and whether each row is valid."""
        s = torch.arange(length, device=self.starts.device)[None, :]
        start = self.starts[:, None]
        if window:
            pos = s + window * torch.div(start - 1 - s, window, rounding_mode="floor")
            return pos, pos >= 0
        return s.expand(self.batch_size, -1), s < start

    def mask(self, old_len: int, window: int) -> torch.Tensor:
        """Which keys each query sees: ``[B, Tq, old_len + Tq]`` over (cached keys, new keys)."""
        key = (old_len, window)
        if key not in self._masks:
            old_pos, old_valid = self.cached_positions(old_len, window)
            kpos = torch.cat([old_pos, self.query_pos], dim=1)
            kvalid = torch.cat([old_valid, self.query_valid], dim=1)
            q = self.query_pos[:, :, None]
            k = kpos[:, None, :]
            m = kvalid[:, None, :] & (k <= q)
            if window:
                m &= (q - k) < window
            self._masks[key] = m
        return self._masks[key]
