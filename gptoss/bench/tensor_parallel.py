"""``gptoss bench --tensor-parallel N``: the same JSON as ``gptoss bench``, timed through the tensor parallel
engine (``LLM(..., tensor_parallel_size=N)``): rank 0 schedules, every rank runs each step over its shard.

Without --model, the preset's random weights are first written to a temporary synthetic checkpoint, since
each rank reads its own slices from the files. Prefill is one request of --prompt-len tokens; decode at
batch b is b requests decoding --decode-tokens tokens each after their prompts, greedy, stop tokens
ignored. Floors are computed as for one device over rank 0's share of the weights (the bytes one rank
must read a step), so ``ratio_to_floor`` compares a rank with its own memory bandwidth.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from gptoss.bench.common import emit_json, log
from gptoss.bench.floor import decode_row, floor_bandwidth, prefill_row
from gptoss.bench.memory import copy_bandwidth_gbs
from gptoss.bench.single import header, summary_table
from gptoss.engine import LLM, SamplingParams, check_device, resolve_dtype
from gptoss.model import ModelConfig

GREEDY = dict(temperature=0.0, ignore_stop=True)


def run(args: argparse.Namespace, batch_sizes: list[int]) -> int:
    """Time prefill and decode at each of ``batch_sizes`` over ``--tensor-parallel`` ranks; print the JSON."""
    device = check_device(args.device)
    tmp = None if args.model else tempfile.TemporaryDirectory(prefix="gptoss-bench-tp-")
    try:
        folder, source = checkpoint(args, device, tmp)
        result = measure(args, batch_sizes, device, folder, source)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return emit_json(result, args.out)


def checkpoint(args: argparse.Namespace, device: str, tmp) -> tuple[str, str]:
    """The checkpoint folder the ranks read and its name: ``--model``, or the preset's random weights written
    to ``tmp``."""
    if args.model:
        from gptoss.model.hub import resolve_model_path

        return resolve_model_path(args.model), args.model
    from gptoss.model.synthetic import write_checkpoint

    config = ModelConfig.preset(args.preset)
    dtype = resolve_dtype(args.dtype, device, config.weight_bytes())
    log(f"writing random {args.preset} weights to {tmp.name} (each rank reads its slices)")
    folder = write_checkpoint(
        tmp.name,
        config,
        layout="original",
        seed=args.seed,
        dtype=torch.float32 if dtype == torch.float32 else torch.bfloat16,
        tokenizer=False,
    )
    return folder, f"random {args.preset}"


def prefill_seconds(engine, prompt: list[int]) -> float:
    """One request of ``prompt``, to its first token."""
    seq = engine.add_request(prompt, SamplingParams(max_tokens=1, **GREEDY))
    start = time.perf_counter()
    while not seq.is_finished:
        engine.step()
    return time.perf_counter() - start


def decode_seconds(engine, prompts: list[list[int]], steps: int) -> float:
    """One request for each of ``prompts``, prefilled untimed, then ``steps`` decode steps of them all."""
    params = SamplingParams(max_tokens=steps + 1, **GREEDY)
    seqs = [engine.add_request(p, params) for p in prompts]
    while any(not s.output_ids for s in seqs):  # prefills (not timed)
        engine.step()
    start = time.perf_counter()
    while any(not s.is_finished for s in seqs):
        engine.step()
    return time.perf_counter() - start


def measure(args: argparse.Namespace, batch_sizes: list[int], device: str, folder, source: str) -> dict:
    """The JSON of ``gptoss bench`` for the engine over ``--tensor-parallel`` ranks on ``folder``."""
    n = args.tensor_parallel
    is_cuda = device.startswith("cuda")
    ctx = args.prompt_len + args.decode_tokens + 2
    t0 = time.perf_counter()
    llm = LLM(
        folder,
        device=device,
        dtype=args.dtype,
        max_batch=max(batch_sizes + [1]),
        max_model_len=ctx,
        tokenizer=object(),
        kv_cache=args.kv_cache,
        tensor_parallel_size=n,
    )
    try:
        load_s = time.perf_counter() - t0
        model, engine = llm.model, llm.engine
        config = model.full_config
        gen = torch.Generator().manual_seed(args.seed)

        def prompts(b: int) -> list[list[int]]:
            return [torch.randint(0, config.vocab_size, (args.prompt_len,), generator=gen).tolist() for _ in range(b)]

        prefill_s = min(prefill_seconds(engine, prompts(1)[0]) for _ in range(args.repeats))
        log(f"prefill {args.prompt_len}: {args.prompt_len / prefill_s:.0f} tok/s on {n} ranks")
        gpu_name = torch.cuda.get_device_name() if is_cuda else None
        measured_bw = copy_bandwidth_gbs(device)
        bandwidth = floor_bandwidth(args.bandwidth_gbs, gpu_name, measured_bw)
        decode = []
        for b in batch_sizes:
            seconds = min(decode_seconds(engine, prompts(b), args.decode_tokens) for _ in range(args.repeats))
            decode.append(
                decode_row(model, b, args.decode_tokens, seconds, args.prompt_len + args.decode_tokens // 2, bandwidth)
            )
            log(f"decode batch {b}: {b * args.decode_tokens / seconds:.1f} tok/s on {n} ranks")
        mem = model.memory_bytes()
        result: dict = header(source, device, gpu_name, model.dtype, config, engine.runner.kind, False, load_s) | {
            "tensor_parallel": n,
            "weights_bytes": mem,  # rank 0's share
            "weights_gib": round(mem["total"] / 2**30, 3),
            "kv_cache_bytes": engine.runner.local_cache.nbytes(),  # rank 0's share
            "floor": {"bandwidth_gbs": bandwidth, "measured_copy_gbs": measured_bw, "per_rank": True},
            "prefill": prefill_row(config, args.prompt_len, prefill_s),
            "decode": decode,
            "cuda_graphs": False,
        }
        if is_cuda:
            result["memory"] = {"rank0_peak_allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2)}
        result["table"] = summary_table(result)
    finally:
        llm.close()
    return result
