"""Which sequences run in the next step: admit waiting requests into free cache slots, prefill prompts in
chunks, otherwise decode every running sequence by one token."""

from __future__ import annotations

from collections import deque

from gptoss.engine.sequence import Sequence, Status


class Scheduler:
    def __init__(self, max_batch: int, max_prefill_tokens: int = 2048):
        self.max_batch = max_batch
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.free_slots = list(range(max_batch - 1, -1, -1))

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> tuple[list[tuple[Sequence, int]], bool]:
        """Returns ``([(sequence, tokens to run)], is_prefill)``."""
        while self.waiting and self.free_slots:
            seq = self.waiting.popleft()
            seq.slot = self.free_slots.pop()
            seq.status = Status.RUNNING
            self.running.append(seq)
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
        if seq.slot is not None:
            self.free_slots.append(seq.slot)
            seq.slot = None
