"""Which sequences run in the next step: admit waiting requests into free cache slots, prefill prompts in
chunks, otherwise decode every running sequence by one token.

The KV cache (``blocks``) hands out blocks as tokens arrive, from one pool shared by every sequence. On
admission a request takes its longest cached prefix (:meth:`~gptoss.model.paged_cache.PagedKVCache.adopt`)
and is admitted only when its first chunk after that fits; a prefill chunk waits when it does not, and when
decoding would run out the most recently admitted sequence is preempted — its blocks are given back (full
ones stay cached) and it waits again, to be recomputed from its tokens (prompt and output so far) when there
is room, mostly from its own cached blocks.
"""

from __future__ import annotations

from collections import deque

from gptoss.engine.sequence import Sequence, Status


class Scheduler:
    def __init__(self, max_batch: int, max_prefill_tokens: int = 2048, blocks=None):
        """``blocks``: a :class:`~gptoss.model.paged_cache.PagedKVCache` (its ``adopt``, ``blocks_needed``,
        ``fits`` and ``free``), or None when nothing needs accounting (every step fits)."""
        self.max_batch = max_batch
        self.max_prefill_tokens = max_prefill_tokens
        self.blocks = blocks
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.free_slots = list(range(max_batch - 1, -1, -1))
        self.num_preempted = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> tuple[list[tuple[Sequence, int]], bool]:
        """Returns ``([(sequence, tokens to run)], is_prefill)``."""
        while self.waiting and self.free_slots:
            seq = self.waiting[0]
            if self.blocks is not None and not self._admit_blocks(seq, self.free_slots[-1]):
                break
            self.waiting.popleft()
            seq.slot = self.free_slots.pop()
            seq.status = Status.RUNNING
            self.running.append(seq)
        if self.blocks is not None:
            return self._schedule_blocks()
        budget = self.max_prefill_tokens
        prefill = []
        for seq in self.running:
            pending = len(seq) - seq.num_cached
            if pending > 1 and budget > 0:
                n = min(pending, budget)
                prefill.append((seq, n))
                budget -= n
        if prefill:
            return prefill, True
        return [(seq, 1) for seq in self.running], False

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._release(seq)

    # ------------------------------------------------------------------ the block pool
    def _release(self, seq: Sequence) -> None:
        if seq.slot is not None:
            if self.blocks is not None:
                self.blocks.free(seq.slot)
            self.free_slots.append(seq.slot)
            seq.slot = None

    def _need(self, seq: Sequence, n: int, slot: int | None = None) -> dict[str, int]:
        return self.blocks.blocks_needed(seq.slot if slot is None else slot, seq.num_cached, n)

    def _admit_blocks(self, seq: Sequence, slot: int) -> bool:
        """Give ``seq`` its cached prefix in ``slot``; keep it only when the first chunk after that fits
        next to one more block for each running sequence (else the slot is emptied again)."""
        # A request that asked for its prompt's log-probabilities computes every position (a cached block has
        # no logits): it adopts nothing, but the blocks it fills are cached for others.
        tokens = seq.token_ids if seq.prompt_logprobs is None else seq.token_ids[:1]
        seq.num_cached = self.blocks.adopt(slot, tokens, seq.cache_salt)
        if seq.cached_tokens is None:  # the first admission: what a request reused (not its own recompute)
            seq.cached_tokens = min(seq.num_cached, len(seq.prompt_ids))
        need = self._need(seq, min(len(seq) - seq.num_cached, self.max_prefill_tokens), slot)
        need = {g: c + len(self.running) for g, c in need.items()}
        if self.blocks.fits(need):
            return True
        self.blocks.free(slot)
        seq.num_cached = 0
        return False

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._release(seq)
        seq.status = Status.WAITING
        seq.num_cached = 0
        self.waiting.appendleft(seq)
        self.num_preempted += 1

    def _schedule_blocks(self) -> tuple[list[tuple[Sequence, int]], bool]:
        budget = self.max_prefill_tokens
        prefill: list[tuple[Sequence, int]] = []
        total: dict[str, int] = {}
        for seq in list(self.running):
            pending = len(seq) - seq.num_cached
            if pending <= 1 or budget <= 0 or seq not in self.running:
                continue
            n = min(pending, budget)
            while True:
                need = self._need(seq, n)
                trial = {g: total.get(g, 0) + c for g, c in need.items()}
                if self.blocks.fits(trial):
                    break
                victim = self.running[-1]
                if victim is seq or any(victim is s for s, _ in prefill):
                    trial = None
                    break
                self._preempt(victim)
            if trial is None:
                break
            prefill.append((seq, n))
            total = trial
            budget -= n
        if prefill:
            return prefill, True
        while self.running:
            total = {}
            for seq in self.running:
                for g, c in self._need(seq, 1).items():
                    total[g] = total.get(g, 0) + c
            if self.blocks.fits(total):
                break
            self._preempt(self.running[-1])
        return [(seq, 1) for seq in self.running], False
