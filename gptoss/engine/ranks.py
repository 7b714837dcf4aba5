"""Tensor parallel ranks: where each process sits in the group, and how it gets there and starts working.

* Local ranks: :func:`spawn_workers` starts ranks ``1..N-1`` as processes (``LLM(...,
  tensor_parallel_size=N)``, ``gptoss serve --tensor-parallel N``). Several machines: every process is
  started by ``torchrun`` (its rendezvous flags set ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` ...);
  :func:`from_environment` reads them.
* Rank 0 (:func:`start_rank0`) checks the split, decides the runner every rank builds (the same KV pool on
  each: :func:`group_runner_kwargs`), joins the group, loads its shard and waits for the other ranks; its
  engine then runs on that shard and channel.
* Every other rank runs :func:`follow`: join, load its shard, build the same runner, then apply rank 0's
  messages (:func:`~gptoss.engine.distributed.worker_loop`) until rank 0 says stop. A spawned rank enters it
  from its process's entry point here, a ``torchrun`` rank from :func:`gptoss.engine.llm.follow_rank0`.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import time
from typing import Any

import torch
import torch.distributed as dist

from gptoss.engine.distributed import DEFAULT_TIMEOUT_S, RankFailed, StepChannel, Topology, worker_loop
from gptoss.engine.model_runner import ModelRunner, default_kv_tokens, runner_kwargs
from gptoss.errors import GptossError
from gptoss.model.parallel import Shard, ShardedTransformer


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
    dist.init_process_group(
        topology.backend,
        init_method=topology.init_method,
        rank=topology.rank,
        world_size=topology.world,
        timeout=timeout,
        **kwargs,
    )


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


def group_runner_kwargs(
    config,
    max_batch: int,
    max_model_len: int | None,
    kv_cache: str,
    kv_cache_tokens: int | None,
    prefix_caching: bool,
    measured_on: str | None = None,
    dtype: torch.dtype | None = None,
) -> dict:
    """The :class:`ModelRunner` arguments every rank of a group builds, for rank 0's engine so configured:
    every rank's KV pool must be the same. Left unset, its size is decided on rank 0 from the free memory of
    device ``measured_on`` for weights in ``dtype`` (spawned ranks, which receive it), or is ``max_batch``
    full contexts (``torchrun``, where every rank decides it alone)."""
    context = min(max_model_len or config.max_position_embeddings, config.max_position_embeddings)
    if kv_cache_tokens is None and measured_on is None:
        kv_cache_tokens = max_batch * context
    elif kv_cache_tokens is None:
        kv_cache_tokens = default_kv_tokens(
            config, dtype, torch.device(measured_on), config.weight_bytes(), max_batch, context
        )
    return runner_kwargs(
        max_batch, context, kv_cache=kv_cache, kv_cache_tokens=kv_cache_tokens, prefix_caching=prefix_caching
    )


def load_shard(model_dir, topology: Topology, dtype, layout: str) -> ShardedTransformer:
    """This rank's slices of the checkpoint in ``model_dir``, on its device."""
    shard = Shard(topology.rank, topology.world)
    return ShardedTransformer.from_checkpoint(model_dir, shard, device=topology.device, dtype=dtype, layout=layout)


def _join(topology: Topology, model_dir, dtype, layout: str, workers: list) -> tuple[ShardedTransformer, StepChannel]:
    """Join the group and load this rank's shard. ``workers``: the local ranks this process spawned (a
    failure names the one that exited)."""
    init(topology)
    channel = StepChannel(topology)
    channel.workers = workers
    return load_shard(model_dir, topology, dtype, layout), channel


def follow(topology: Topology, model_dir, dtype, layout: str, runner: dict) -> None:
    """A rank other than 0: join, load this rank's shard, build the runner rank 0's engine has (``runner``:
    its arguments) and run the steps rank 0 sends until it says stop."""
    model, channel = _join(topology, model_dir, dtype, layout, [])
    shard_runner = ModelRunner(model, **runner)
    channel.ready()
    worker_loop(shard_runner, channel)
    channel.close()


def _spawned_main(
    topology: Topology, model_dir: str, dtype, layout: str, runner: dict, threads: int | None, ready
) -> None:
    """Entry point of a spawned local rank: say it started, then :func:`follow`. A failure is one line on
    stderr naming the rank, and exit code 1."""
    if threads:
        torch.set_num_threads(threads)
    try:
        ready.put(topology.rank)  # imports done: rank 0 may start the rendezvous
        follow(topology, model_dir, dtype, layout, runner)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        print(f"gptoss: tensor parallel rank {topology.rank}: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)


def spawn_workers(
    world: int,
    device: str,
    model_dir: str,
    dtype,
    layout: str,
    runner: dict,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    threads: int | None = None,
) -> tuple[Topology, list]:
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
        topo = Topology(rank, world, dev, default_backend(dev), timeout_s, init_method, rank)
        proc = ctx.Process(
            target=_spawned_main,
            args=(topo, str(model_dir), dtype, layout, runner, threads, ready),
            name=f"gptoss-tp-rank{rank}",
            daemon=True,
        )
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
    return Topology(0, world, dev0, default_backend(dev0), timeout_s, init_method, 0), procs


def start_rank0(
    model_dir,
    config,
    device: str,
    dtype,
    layout: str,
    engine: dict,
    topology: Topology | None = None,
    world: int = 1,
    timeout_s: float | None = None,
) -> tuple[ShardedTransformer, StepChannel, int]:
    """Rank 0 of a tensor parallel group: of the one ``torchrun`` started (``topology``), else of ``world``
    ranks, ``1..world-1`` spawned here (each local rank gets an equal share of this process's CPU threads).
    ``engine``: the settings of rank 0's engine (``max_batch``, ``max_model_len``, ``kv_cache``,
    ``kv_cache_tokens``, ``prefix_caching``). ``timeout_s``: seconds any collective may wait. Returns rank
    0's shard, the channel to the other ranks (its ``workers``: the spawned processes) and the KV cache
    tokens every rank's pool holds, once every rank has loaded its shard."""
    world = topology.world if topology is not None else world
    Shard(0, world).check(config)  # before any process starts
    timeout = timeout_s or DEFAULT_TIMEOUT_S
    runner = group_runner_kwargs(config, **engine, measured_on=None if topology is not None else device, dtype=dtype)
    procs = []
    if topology is None:
        threads = None if device.startswith("cuda") else max(1, torch.get_num_threads() // world)
        topology, procs = spawn_workers(world, device, str(model_dir), dtype, layout, runner, timeout, threads)
        if threads:
            torch.set_num_threads(threads)
    if topology.rank != 0:
        raise GptossError(f"LLM runs on rank 0; rank {topology.rank} runs follow_rank0()")
    try:
        model, channel = _join(topology, model_dir, dtype, layout, procs)
        channel.ready()
    except BaseException:
        for proc in procs:
            proc.kill()
        raise
    return model, channel, runner["kv_cache_tokens"]
