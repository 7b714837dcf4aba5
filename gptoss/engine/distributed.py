"""Tensor parallel generation over ``torch.distributed``: rank 0 schedules and samples, every rank runs
each model step over its shard of the weights and of the KV cache.

* Rank 0 (the process with the scheduler, the sampler and, when serving, the HTTP API) broadcasts each
  step's plan: the token ids, the cache slots, the positions (:class:`~gptoss.engine.model_runner.StepPlan`),
  and every change the engine makes to the cache outside a step (a freed slot, a copied prefix:
  :class:`MirroredCache`). The other ranks run :func:`worker_loop`: receive, apply, repeat. Everyone then
  runs the same model step, whose collectives (:mod:`gptoss.model.parallel`) join the shards; the logits
  come out whole on every rank.
* How the ranks start (spawned here or by ``torchrun``), join the group and load their shards:
  :mod:`gptoss.engine.ranks`.
* Faults: every collective has the process group's timeout. When idle, rank 0 sends a heartbeat at a
  fraction of it, so that a worker never waits forever on a dead rank 0, and rank 0 notices a dead worker.
  A failed collective or a local worker that exited marks the channel broken with one line naming the rank;
  every later step raises that line (:class:`RankFailed`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from gptoss.errors import GptossError

log = logging.getLogger("gptoss.distributed")

DEFAULT_TIMEOUT_S = 300.0


class RankFailed(GptossError):
    """A rank died, hung past the collective timeout, or failed a step: tensor parallel work cannot go on."""


@dataclass
class Topology:
    """Where this process sits: ``rank`` of ``world``, its device, the backend and collective timeout."""

    rank: int
    world: int
    device: str
    backend: str
    timeout_s: float = DEFAULT_TIMEOUT_S
    init_method: str = "env://"
    local_rank: int = 0


class StepChannel:
    """Rank 0 -> all: plans and cache changes, in order, through ``broadcast_object_list``. Rank 0 holds
    :attr:`lock` across a send and the model step it announces, so that heartbeats never fall between."""

    def __init__(self, topology: Topology, heartbeat_s: float | None = None):
        self.topology = topology
        self.lock = threading.RLock()
        self.broken: str | None = None
        self.workers: list = []  # local worker processes (rank 0 of a spawned group)
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._device = torch.device(topology.device) if topology.backend == "nccl" else None
        self._heartbeat_s = heartbeat_s if heartbeat_s is not None else max(0.5, topology.timeout_s / 4)

    def ready(self) -> None:
        """Every rank, once its shard is loaded: wait for the others (a barrier, so that no collective starts
        while a rank is still reading its weights), then rank 0 starts its heartbeat."""
        try:
            dist.barrier()
        except Exception as exc:
            raise self.fail(exc) from exc
        if self.topology.rank == 0 and self.topology.world > 1:
            threading.Thread(
                target=self._heartbeat, args=(self._heartbeat_s,), name="gptoss-tp-heartbeat", daemon=True
            ).start()

    @property
    def world(self) -> int:
        return self.topology.world

    def check(self) -> None:
        """Raise :class:`RankFailed` if a rank is known to be gone."""
        if self.broken is None:
            self._check_workers()
        if self.broken is not None:
            raise RankFailed(self.broken)

    def _check_workers(self) -> None:
        for rank, proc in enumerate(self.workers, start=1):
            if proc.exitcode is not None:
                self.broken = f"tensor parallel rank {rank} exited (exit code {proc.exitcode})"
                return

    def fail(self, exc: BaseException) -> RankFailed:
        """Mark the channel broken after a failed collective; the line names the rank when it can."""
        if self.broken is None:
            self._check_workers()
        if self.broken is None:
            deadline = time.monotonic() + 2.0  # a dead local worker may take a moment to be reaped
            while self.workers and self.broken is None and time.monotonic() < deadline:
                time.sleep(0.05)
                self._check_workers()
        if self.broken is None:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.broken = f"tensor parallel collective failed on rank {self.topology.rank} ({first})"
        return RankFailed(self.broken)

    def send(self, message: tuple) -> None:
        """Rank 0: broadcast ``message`` (call with :attr:`lock` held)."""
        self.check()
        try:
            dist.broadcast_object_list([message], src=0, device=self._device)
        except Exception as exc:
            raise self.fail(exc) from exc
        self._last = time.monotonic()

    def receive(self) -> tuple:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, device=self._device)
        return box[0]

    def _heartbeat(self, interval: float) -> None:
        while not self._stop.wait(interval / 2):
            if self.broken is not None:
                return
            if time.monotonic() - self._last < interval or not self.lock.acquire(blocking=False):
                continue
            try:
                if time.monotonic() - self._last >= interval:
                    self.send(("noop",))
            except RankFailed as exc:
                log.error("%s", exc)
            finally:
                self.lock.release()

    def close(self) -> None:
        """Rank 0: tell the workers to stop, then leave the group."""
        self._stop.set()
        if self.topology.rank == 0 and self.broken is None and self.topology.world > 1:
            with self.lock:
                try:
                    self.send(("stop",))
                except RankFailed:
                    pass
        for proc in self.workers:
            proc.join(timeout=0 if self.broken else 10)
            if proc.is_alive():
                proc.kill()
        if dist.is_initialized():
            if self.broken is None:
                dist.destroy_process_group()


class MirroredCache:
    """Rank 0's view of its KV cache: reads go straight through; the calls that change it outside a model
    step (``free``, ``copy_slot``, ``adopt``, ``forget_cached``) are first sent to the other ranks, which apply
    them to theirs (the same calls on the same state: every rank's blocks stay the same)."""

    MIRRORED = frozenset({"free", "copy_slot", "adopt", "forget_cached"})

    def __init__(self, cache, channel: StepChannel):
        self._cache, self._channel = cache, channel

    def __getattr__(self, name: str):
        attr = getattr(self._cache, name)
        if name not in self.MIRRORED:
            return attr

        def mirrored(*args):
            with self._channel.lock:
                self._channel.send(("cache", name, args))
                return attr(*args)

        return mirrored


def worker_loop(runner, channel: StepChannel) -> None:
    """Ranks 1..N-1: apply rank 0's messages until it says stop. A step that raises here raised on rank 0
    too (the same deterministic inputs): the error is logged and the loop goes on, as rank 0's engine does."""
    while True:
        try:
            message = channel.receive()
        except Exception as exc:
            raise channel.fail(exc) from exc
        kind = message[0]
        if kind == "stop":
            return
        if kind == "noop":
            continue
        try:
            if kind == "step":
                runner.execute(message[1])
            elif kind == "cache":
                getattr(runner.cache, message[1])(*message[2])
            else:
                raise GptossError(f"unknown tensor parallel message {kind!r}")
        except RankFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - mirrored from rank 0, which fails the request alone
            log.warning("rank %d: step failed as on rank 0: %s: %s", channel.topology.rank, type(exc).__name__, exc)
