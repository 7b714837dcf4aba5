"""Pieces shared by subcommands: the --model argument with its demo fallback, device and dtype flags."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gptoss.errors import CheckpointError

DEFAULT_MODEL = "openai/gpt-oss-20b"
DEMO_PRESET = "demo"
DEMO_VERSION = 2  # bump when the demo's shape changes, so an old cached demo is not reused
# The name the synthetic demo is served and reported under: never the real model's.
DEMO_MODEL_NAME = "gpt-oss-synthetic-demo"
# The demo's weights are random: reasoning it out to 2,048 tokens shows nothing but a wait. Its defaults
# keep a whole turn to seconds on a CPU (flags still override them).
DEMO_REASONING_MAX_TOKENS = 24
DEMO_MAX_TOKENS = 96


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        "-m",
        default=None,
        help=f"checkpoint folder or hub id (default: {DEFAULT_MODEL}; without a network, the synthetic demo)",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    parser.add_argument(
        "--max-model-len",
        type=positive_int,
        default=None,
        help="tokens of context per sequence (default: the model's own, 131072 for gpt-oss)",
    )
    parser.add_argument(
        "--kv-cache-tokens",
        type=positive_int,
        default=None,
        help="positions the KV cache holds, one pool for all sequences, filled as tokens arrive "
        "(default: what 70%% of the free memory holds, at most every sequence at full length)",
    )
    parser.add_argument(
        "--no-prefix-cache",
        dest="prefix_cache",
        action="store_false",
        help="do not keep the KV of finished requests for later ones that share their prefix "
        "(default: kept, evicted least recently used when memory is needed)",
    )
    parser.add_argument(
        "--quantize",
        default=None,
        choices=["mxfp4"],
        help="pack a dense-expert (fine-tuned) checkpoint's experts into MXFP4 on load (default: keep them as stored)",
    )
    add_threads_arg(parser)


def add_browser_args(parser: argparse.ArgumentParser) -> None:
    """The browser tool's flags: its local corpus and the non-public hosts it may open."""
    parser.add_argument(
        "--corpus",
        default=None,
        metavar="DIR",
        help="the browser's local corpus: a folder of HTML, Markdown, text or PDF files (indexed on start)",
    )
    parser.add_argument(
        "--browser-allow-hosts",
        default=None,
        metavar="LIST",
        help="hosts the browser may open although they are not public (it refuses loopback, private and "
        "link-local addresses): comma-separated names (*.corp.example), addresses or networks "
        "(10.0.0.0/8), each optionally :PORT (default: GPTOSS_BROWSER_ALLOW_HOSTS)",
    )


def add_threads_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads for the model (default: $GPTOSS_NUM_THREADS, else the physical cores)",
    )


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def apply_threads(args: argparse.Namespace) -> None:
    """--threads: the native CPU kernels and torch both use that many (one OpenMP pool)."""
    if getattr(args, "threads", None):
        from gptoss.kernels import cpu

        cpu.set_num_threads(args.threads)


def demo_dir() -> Path:
    base = os.environ.get("GPTOSS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gptoss")
    return Path(base) / f"synthetic-{DEMO_PRESET}-v{DEMO_VERSION}"


def is_demo(folder: str | os.PathLike | None) -> bool:
    """Whether ``folder`` is the synthetic demo checkpoint (the fallback of a missing default model)."""
    if folder is None:
        return False
    try:
        return Path(folder).resolve() == demo_dir().resolve()
    except OSError:
        return False


def ensure_demo_checkpoint() -> Path:
    """The clearly labelled synthetic demo checkpoint, written on first use."""
    from gptoss.model.config import ModelConfig
    from gptoss.model.synthetic import SYNTHETIC_MARKER, write_checkpoint

    folder = demo_dir()
    if not (folder / SYNTHETIC_MARKER).is_file():
        print(f"gptoss: writing the synthetic demo checkpoint to {folder} ...", file=sys.stderr)
        write_checkpoint(folder, ModelConfig.preset(DEMO_PRESET), layout="hf", seed=0)
    return folder


def resolve_model_arg(model: str | None) -> Path:
    """An explicit --model must resolve; the default hub id falls back to the demo when it cannot be fetched."""
    from gptoss.model.hub import resolve_model_path

    if model:
        return resolve_model_path(model)
    try:
        return resolve_model_path(DEFAULT_MODEL)
    except CheckpointError as exc:
        print(f"gptoss: {DEFAULT_MODEL} is not available ({str(exc).split(';')[0]}).", file=sys.stderr)
        folder = ensure_demo_checkpoint()
        return folder


def add_tensor_parallel_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tensor-parallel",
        type=int,
        default=1,
        metavar="N",
        help="shard the model over N local ranks (processes; GPUs 0..N-1 on CUDA): attention by "
        "heads, experts across ranks. Under torchrun, the group torchrun starts instead",
    )
    parser.add_argument(
        "--distributed-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds a tensor parallel collective may wait before the rank is declared gone (default 300)",
    )


def tensor_parallel_kwargs(args: argparse.Namespace) -> dict:
    """LLM arguments for --tensor-parallel, or for this process's place in a torchrun group (rank 0)."""
    from gptoss.engine.distributed import DEFAULT_TIMEOUT_S
    from gptoss.engine.ranks import from_environment
    from gptoss.errors import GptossError

    size = getattr(args, "tensor_parallel", 1) or 1
    timeout = getattr(args, "distributed_timeout", None)
    if timeout is not None and timeout <= 0:
        raise GptossError(f"--distributed-timeout: expected a positive number of seconds, found {timeout}")
    topology = from_environment(args.device, timeout or DEFAULT_TIMEOUT_S)
    if topology is not None:
        return {"topology": topology, "distributed_timeout": timeout}
    if size < 1:
        raise GptossError(f"--tensor-parallel: expected a positive number of ranks, found {size}")
    return {"tensor_parallel_size": size, "distributed_timeout": timeout} if size > 1 else {}


def follow_if_not_rank0(args: argparse.Namespace, max_batch: int = 8) -> bool:
    """Under torchrun, a rank other than 0 follows rank 0's steps here (until it stops) and returns True."""
    from gptoss.engine.distributed import DEFAULT_TIMEOUT_S
    from gptoss.engine.llm import follow_rank0
    from gptoss.engine.ranks import from_environment

    topology = from_environment(args.device, getattr(args, "distributed_timeout", None) or DEFAULT_TIMEOUT_S)
    if topology is None or topology.rank == 0:
        return False
    follow_rank0(
        resolve_model_arg(args.model),
        topology,
        dtype=args.dtype,
        max_batch=max_batch,
        max_model_len=args.max_model_len,
        kv_cache_tokens=getattr(args, "kv_cache_tokens", None),
        prefix_caching=getattr(args, "prefix_cache", True),
    )
    return True


def load_llm(args: argparse.Namespace, max_batch: int = 8):
    """The model of --model (or the demo), on a device checked before anything is read or written."""
    import warnings

    from gptoss.engine import LLM
    from gptoss.engine.llm import check_device
    from gptoss.model.synthetic import SyntheticCheckpointWarning

    if args.device:
        check_device(args.device)
    folder = resolve_model_arg(args.model)
    demo = is_demo(folder)
    if demo:
        import torch

        # The demo's matrices are tiny (hidden size 64): intra-op threads only add synchronisation, and on
        # a CPU shared with other work they slowed its decoding about tenfold (measured on 2 cores).
        torch.set_num_threads(1)
    apply_threads(args)  # an explicit --threads wins
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntheticCheckpointWarning)  # announced below, in the CLI's words
        llm = LLM(
            folder,
            device=args.device,
            dtype=args.dtype,
            max_batch=max_batch,
            max_model_len=args.max_model_len,
            progress=sys.stderr.isatty(),
            kv_cache_tokens=getattr(args, "kv_cache_tokens", None),
            prefix_caching=getattr(args, "prefix_cache", True),
            quantize=getattr(args, "quantize", None),
            lora=getattr(args, "lora", None) or None,
            **tensor_parallel_kwargs(args),
        )
    for rank, proc in enumerate(llm.workers, start=1):
        print(f"gptoss: tensor parallel rank {rank} is process {proc.pid}", file=sys.stderr)
    llm.is_demo = demo
    if llm.is_synthetic:
        print(f"gptoss: SYNTHETIC DEMO CHECKPOINT ({folder}): random weights, its output is noise.", file=sys.stderr)
    return llm
