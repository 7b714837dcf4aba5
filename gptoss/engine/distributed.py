"""Tensor parallel generation over ``torch.distributed``: rank 0 schedules and samples, every rank runs
each model step over its shard of the weights and of the KV cache.

* Rank 0 (the process with the scheduler, the sampler and, when serving, the HTTP API) broadcasts each
  step's plan: the token ids, the cache slots, the positions (``StepPlan``), and every change the
  engine makes to the cache outside a step (a freed slot, a copied prefix). The other ranks run
  :func:`worker_loop`: receive, apply, repeat. Everyone then runs the same model step, whose
  collectives (:mod:`gptoss.model.parallel`) join the shards; the logits come out whole on every rank.
* Local ranks: :func:`spawn_workers` starts ranks ``1..N-1`` as processes (``LLM(...,
  tensor_parallel_size=N)``, ``gptoss serve --tensor-parallel N``). Several machines: every process is
  started by ``torchrun`` (its rendezvous flags set ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` ...);
  :func:`from_environment` reads them.
* Faults: every collective has the process group's timeout. When idle, rank 0 sends a heartbeat at a
  fraction of it, so that a worker never waits forever on a dead rank 0, and rank 0 notices a dead worker.
  A failed collective or a local worker that exited marks the channel broken with one line naming the rank;
  every later step raises that line (:class:`RankFailed`).
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from gptoss.errors import GptossError

log = logging.getLogger("gptoss.distributed")

DEFAULT_TIMEOUT_S = 300.0


class RankFailed(GptossError):
    """A rank died, hung past the collective timeout, or failed a step: tensor parallel work cannot go on."""


@dataclass
class StepPlan:
    """One model step, as rank 0 decided it: new ``tokens`` of sequences in cache ``slots`` at ``starts``."""

    tokens: list[int]
    slots: list[int]
    starts: list[int]
    lens: list[int]
    full: list[bool] = field(default_factory=list)  # per sequence: logits of every new token, not only the last


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
    extra: dict = field(default_factory=dict)


def default_backend(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(topology: Topology) -> None:
    """Join the process group (gloo on the CPU, NCCL on GPUs), with the collective timeout."""
    if topology.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(topology.device))
    timeout = datetime.timedelta(seconds=topology.timeout_s)
    kwargs: dict[str, Any] = {}
    if topology.backend == "nccl":
        kwargs["device_id"] = torch.device(topology.device)
    dist.init_process_group(topology.backend, init_method=topology.init_method, rank=topology.rank,
                            world_size=topology.world, timeout=timeout, **kwargs)


def from_environment(device: str | None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Topology | None:
    """The topology ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``),
    or ``None`` outside it."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device in (None, "", "auto"):
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda":
        device = f"cuda:{local}"
    return Topology(rank, world, device, default_backend(device), timeout_s, "env://", local)


# ----------------------------------------------------------------------------- the step channel
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
            threading.Thread(target=self._heartbeat, args=(self._heartbeat_s,), name="gptoss-tp-heartbeat",
                             daemon=True).start()

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


# ----------------------------------------------------------------------------- local ranks
def load_shard(model_dir, topology: Topology, dtype, layout: str, heads: bool = True, experts: bool = True):
    from gptoss.model.parallel import Shard, ShardedTransformer

    shard = Shard(topology.rank, topology.world, heads=heads, experts=experts)
    return ShardedTransformer.from_checkpoint(model_dir, shard, device=topology.device, dtype=dtype, layout=layout)


def _worker_main(topology: Topology, model_dir: str, dtype, layout: str, runner_kwargs: dict, threads: int | None,
                 ready) -> None:
    """Entry point of a spawned local rank: join, load this rank's shard, follow rank 0."""
    import sys

    from gptoss.engine.model_runner import ModelRunner

    if threads:
        torch.set_num_threads(threads)
    try:
        ready.put(topology.rank)  # imports done: rank 0 may start the rendezvous
        init(topology)
        model = load_shard(model_dir, topology, dtype, layout, **topology.extra)
        channel = StepChannel(topology)
        runner = ModelRunner(model, **runner_kwargs)
        channel.ready()
        worker_loop(runner, channel)
        channel.close()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        print(f"gptoss: tensor parallel rank {topology.rank}: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)


def spawn_workers(world: int, device: str, model_dir: str, dtype, layout: str, runner_kwargs: dict,
                  timeout_s: float = DEFAULT_TIMEOUT_S, threads: int | None = None, **shard) -> tuple[Topology, list]:
    """Start local ranks ``1..world-1`` (spawned processes); returns rank 0's topology (this process) and
    the worker processes."""
    import multiprocessing

    if device.startswith("cuda") and torch.cuda.device_count() < world:
        raise GptossError(f"--tensor-parallel {world} needs {world} GPUs; {torch.cuda.device_count()} visible")
    init_method = f"tcp://127.0.0.1:{free_port()}"
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    procs = []
    for rank in range(1, world):
        dev = f"cuda:{rank}" if device.startswith("cuda") else device
        topo = Topology(rank, world, dev, default_backend(dev), timeout_s, init_method, rank, dict(shard))
        proc = ctx.Process(target=_worker_main, args=(topo, str(model_dir), dtype, layout, runner_kwargs, threads,
                                                      ready), name=f"gptoss-tp-rank{rank}", daemon=True)
        proc.start()
        procs.append(proc)
    # Wait until every rank has started (a rank that dies while starting is named here, not after the
    # rendezvous' timeout).
    waiting, deadline = set(range(1, world)), time.monotonic() + timeout_s
    while waiting:
        try:
            waiting.discard(ready.get(timeout=0.2))
        except Exception:  # queue.Empty
            pass
        for rank, proc in enumerate(procs, start=1):
            if rank in waiting and proc.exitcode is not None:
                for other in procs:
                    other.kill()
                raise RankFailed(f"tensor parallel rank {rank} exited while starting (exit code {proc.exitcode})")
        if time.monotonic() > deadline:
            for other in procs:
                other.kill()
            raise RankFailed(f"tensor parallel ranks {sorted(waiting)} did not start within {timeout_s:g} s")
    dev0 = "cuda:0" if device == "cuda" else device
    return Topology(0, world, dev0, default_backend(dev0), timeout_s, init_method, 0, dict(shard)), procs
