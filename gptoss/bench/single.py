"""``gptoss bench`` in one process: prefill and decode tokens/s and the model's memory, beside the floors.

Weights are random (built in memory from a preset, no file needed; on CUDA drawn directly in GPU memory)
unless a checkpoint is named. On CUDA the fast path runs (Triton kernels, paged KV cache, decode CUDA graphs)
and is first checked against the reference path (:mod:`gptoss.bench.reference`). Each decode figure comes
with the bandwidth floor (:mod:`gptoss.bench.floor`) and the ratio to it.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import torch

from gptoss import kernels
from gptoss.bench.common import best_time, cpu_kernels, emit_json, log, sync
from gptoss.bench.floor import decode_row, decode_step_bytes, floor_bandwidth, peak_tflops, prefill_flops, prefill_row
from gptoss.bench.memory import copy_bandwidth_gbs, rss_bytes
from gptoss.engine import check_device, resolve_dtype
from gptoss.model import ModelConfig, Transformer
from gptoss.model.paged_cache import PagedKVCache
from gptoss.model.synthetic import random_tensors

KV_CACHE = "paged"  # the one cache layout, on every device


@dataclass
class Loaded:
    """The model under test and what loading it cost."""

    model: Transformer
    dtype: torch.dtype
    source: str
    load_seconds: float
    resident_bytes: int  # host memory the weights took (CPU), or GPU memory allocated for them (CUDA)


def run(args: argparse.Namespace, batch_sizes: list[int]) -> int:
    """Time prefill of ``--prompt-len`` tokens and decode at each of ``batch_sizes``; print the JSON."""
    device = check_device(args.device)
    is_cuda = device.startswith("cuda")
    if args.threads:
        os.environ["GPTOSS_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if is_cuda:
        torch.cuda.reset_peak_memory_stats()
    loaded = load(args, device)
    model, gpu_name = loaded.model, torch.cuda.get_device_name() if is_cuda else None
    result = describe(loaded, device, gpu_name)
    if not args.no_check and is_cuda:
        from gptoss.bench.reference import check_against_reference

        result["check"] = check_against_reference(model, device)
        log(f"check against the reference path: {result['check']}")

    gen = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(0, model.config.vocab_size, (args.prompt_len,), generator=gen).to(device)
    cache = paged_cache(model, args, batch_sizes, device, loaded.dtype)
    graphs = decode_graphs(model, cache, args, batch_sizes, device, result["kernels"])
    prefill_s = best_time(lambda: prefill(model, cache, prompt), device, args.repeats)
    log(f"prefill {args.prompt_len}: {args.prompt_len / prefill_s:.0f} tok/s")
    measured_bw = copy_bandwidth_gbs(device)
    bandwidth = floor_bandwidth(args.bandwidth_gbs, gpu_name, measured_bw)
    decode = time_decode(model, cache, graphs, args, batch_sizes, gen, device, bandwidth)
    result |= figures(loaded, gpu_name, prefill_s, args.prompt_len, bandwidth, measured_bw, cache.nbytes())
    result |= {"decode": decode, "cuda_graphs": bool(graphs and graphs.graphs)}
    if is_cuda:
        result["memory"] = gpu_memory(loaded, cache)
    graphs = cache = None  # give their memory to what follows
    if args.compare_transformers:
        from gptoss.bench.hf_compare import compare_transformers

        if is_cuda:
            torch.cuda.empty_cache()
        result["transformers"] = compare_transformers(model, args, batch_sizes, prompt, device, loaded.dtype)
    if args.lora_rank:
        from gptoss.bench.lora import lora_costs

        result["lora"] = lora_costs(model, args, device, loaded.dtype)
    result["table"] = summary_table(result)
    return emit_json(result, args.out)


# ----------------------------------------------------------------------------- the steps of a run
def random_tensors_on(config, device: str, dtype, seed: int = 0):
    """Random weights of ``config`` drawn directly on ``device`` (no file, no host copy), with the scales
    of a real checkpoint: packed expert bytes uniform over all E2M1 codes with E8M0 scales near 2**-7
    (as quantizing std-0.02 weights gives), dense weights std 0.02, biases 0.01, norms near 1."""
    from gptoss.model.checkpoint import canonical_shapes

    g = torch.Generator(device=device).manual_seed(seed)
    for name, (shape, kind) in canonical_shapes(config).items():
        if kind == "uint8":
            if name.endswith(".scales"):
                t = torch.randint(119, 123, shape, generator=g, device=device, dtype=torch.uint8)
            else:
                t = torch.randint(0, 256, shape, generator=g, device=device, dtype=torch.uint8)
        else:
            t = torch.randn(shape, generator=g, device=device, dtype=torch.float32 if len(shape) == 1 else dtype)
            if name.endswith("norm.scale"):
                t = 1.0 + 0.1 * t
            elif name.endswith(("attn.sinks", "embedding.weight")):
                pass
            elif name.endswith("weight"):
                t.mul_(0.02)
            else:
                t.mul_(0.01)
        yield name, t


def load(args: argparse.Namespace, device: str) -> Loaded:
    """The checkpoint ``--model``, or random weights of ``--preset``, with the time and memory they took."""
    is_cuda = device.startswith("cuda")
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    if args.model:
        from gptoss.model.checkpoint import locate
        from gptoss.model.hub import resolve_model_path

        folder = resolve_model_path(args.model)
        config = locate(folder).config
        dtype = resolve_dtype(args.dtype, device, config.weight_bytes())
        model = Transformer.from_checkpoint(folder, device=device, dtype=dtype)
        source = str(folder)
    else:
        config = ModelConfig.preset(args.preset)
        dtype = resolve_dtype(args.dtype, device, config.weight_bytes())
        tensors = (
            random_tensors_on(config, device, dtype, args.seed) if is_cuda else random_tensors(config, args.seed, dtype)
        )
        model = Transformer.from_tensors(config, tensors, device=device, dtype=dtype)
        source = f"random {args.preset}"
    sync(device)
    load_s = time.perf_counter() - t0
    # Touch every weight once so that memory-mapped experts count as resident.
    sum(float(t.view(-1)[:: max(1, t.numel() // 64)].float().sum()) for t in model.buffers() if t.dtype == torch.uint8)
    resident = torch.cuda.memory_allocated() if is_cuda else rss_bytes() - rss0
    return Loaded(model, dtype, source, load_s, resident)


def describe(loaded: Loaded, device: str, gpu_name: str | None) -> dict:
    """The run's header: what model, where, which software and kernels (also logged)."""
    model, config = loaded.model, loaded.model.config
    fast = kernels.active(model.unembedding.weight)
    native = cpu_kernels(model)  # the native CPU kernels (GPTOSS_KERNELS=auto)
    log(
        f"{loaded.source}: {model.memory_bytes()['total'] / 2**30:.2f} GiB of weights in {loaded.load_seconds:.1f}s on "
        f"{gpu_name or device}; kv cache {KV_CACHE}, kernels {'on' if fast else 'off'}"
        + (f", native CPU kernels {native['isa']} on {native['threads']} threads" if native else "")
    )
    return header(loaded.source, device, gpu_name, loaded.dtype, config, KV_CACHE, fast, loaded.load_seconds) | {
        "cpu_kernels": native
    }


def header(source, device: str, gpu_name, dtype, config, kv_cache: str, fast: bool, load_s: float) -> dict:
    """The fields every benchmark's JSON opens with: the model, where it ran, the software, when."""
    return {
        "model": source,
        "device": device,
        "gpu": gpu_name,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "triton": kernels.triton_version(),
        "dtype": str(dtype).replace("torch.", ""),
        "config": {"layers": config.num_hidden_layers, "experts": config.num_experts, "hidden": config.hidden_size},
        "kv_cache": kv_cache,
        "kernels": fast,
        "load_seconds": round(load_s, 3),
    }


def paged_cache(model, args: argparse.Namespace, batch_sizes: list[int], device: str, dtype) -> PagedKVCache:
    """A cache with a slot for the prefill and one for each sequence of the widest decode batch (or
    ``--kv-tokens`` tokens, when more)."""
    max_b = max(batch_sizes + [1])
    ctx = args.prompt_len + args.decode_tokens + 1
    max_len = max(ctx, args.kv_tokens or 0)
    blocks = max((max_b + 1) * -(-ctx // 16), -(-(args.kv_tokens or 0) // 16))
    return PagedKVCache(
        model.config,
        max_b + 1,
        max_len,
        num_blocks=2 + blocks,
        max_step_tokens=max(args.prompt_len, max_b),
        device=device,
        dtype=dtype,
    )


def decode_graphs(model, cache, args: argparse.Namespace, batch_sizes: list[int], device: str, fast: bool):
    """CUDA graphs of the decode step at each batch size, where the fast path runs on CUDA (else None)."""
    if not (device.startswith("cuda") and fast and not args.no_cuda_graphs):
        return None
    from gptoss.engine.cuda_graphs import DecodeGraphs

    return DecodeGraphs(model, cache, max_batch=max(batch_sizes + [1]), sizes=tuple(batch_sizes))


def prefill(model, cache, prompt) -> None:
    """One prefill of ``prompt`` into slot 0."""
    meta = cache.prepare([0], [0], [len(prompt)])
    model.step_paged(prompt, meta, cache, logits_index=meta.last_index)
    cache.finish(meta)


def time_decode(model, cache, graphs, args, batch_sizes: list[int], gen, device: str, bandwidth: float) -> list[dict]:
    """Best time of ``--decode-tokens`` greedy steps at each batch size, each beside its bandwidth floor."""
    prompt_len, steps = args.prompt_len, args.decode_tokens
    rows = []
    for b in batch_sizes:
        slots = list(range(1, b + 1))
        for s in slots:  # each sequence its own blocks, as long as the prompt
            cache.allocate(s, 0, prompt_len)
            cache.release_band(s, prompt_len)
        first = torch.randint(0, model.config.vocab_size, (b,), generator=gen).to(device)

        def run_decode(b=b, slots=slots, first=first) -> None:
            toks = first
            for i in range(steps):
                meta = cache.prepare(slots, [prompt_len + i] * b, [1] * b)
                if graphs is not None and graphs.supports(b):
                    logits = graphs.run(toks, meta)
                else:
                    logits = model.step_paged(toks, meta, cache, logits_index=meta.last_index)
                cache.finish(meta)
                toks = logits.argmax(-1)  # greedy, on the device: no host round trip

        seconds = best_time(run_decode, device, args.repeats)
        rows.append(decode_row(model, b, steps, seconds, prompt_len + steps // 2, bandwidth))
        log(
            f"decode batch {b}: {b * steps / seconds:.1f} tok/s "
            f"({rows[-1]['ratio_to_floor']:.2f} of the bandwidth floor)"
        )
    return rows


def figures(
    loaded: Loaded,
    gpu_name: str | None,
    prefill_s: float,
    prompt_len: int,
    bandwidth: float,
    measured_bw: float,
    kv_cache_bytes: int,
) -> dict:
    """The weights' and the cache's memory, the floors, and the prefill against its compute floor (where the
    GPU's peak is known)."""
    model = loaded.model
    mem = model.memory_bytes()
    peak = peak_tflops(gpu_name)
    prefill = prefill_row(model.config, prompt_len, prefill_s)
    if peak:
        flops = prefill_flops(model.config, prompt_len)
        prefill["compute_floor_tok_s"] = round(prompt_len / (flops / (peak * 1e12)), 1)
        prefill["ratio_to_compute_floor"] = round(prefill["tok_s"] / prefill["compute_floor_tok_s"], 3)
    b1 = decode_step_bytes(model, 1, prompt_len)
    return {
        "weights_bytes": mem,
        "weights_gib": round(mem["total"] / 2**30, 3),
        "resident_bytes_model": loaded.resident_bytes,
        "kv_cache_bytes": kv_cache_bytes,
        "floor": {
            "bandwidth_gbs": bandwidth,
            "measured_copy_gbs": measured_bw,
            "batch1_bytes_per_token": {k: int(v) for k, v in b1.items()},
            "batch1_floor_tok_s": round(1 / (b1["total"] / (bandwidth * 1e9)), 1),
            "peak_bf16_tflops": peak,
        },
        "prefill": prefill,
    }


def gpu_memory(loaded: Loaded, cache) -> dict:
    """Where the GPU's memory went: weights, KV cache, the peak, what is left."""
    free, total = torch.cuda.mem_get_info()
    full = cache.allocators.get("full")
    return {
        "weights_gb": round(loaded.resident_bytes / 1e9, 2),
        "kv_cache_gb": round(cache.nbytes() / 1e9, 2),
        "kv_cache_tokens": (full.num_blocks - 1) * cache.block_size if full is not None else None,
        "peak_allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
        "free_gb": round(free / 1e9, 2),
        "total_gb": round(total / 1e9, 2),
    }


def summary_table(r: dict) -> list[dict]:
    """Rows of the results table: what, gptoss tok/s, transformers tok/s, speedup, ratio to the floor."""
    hf = r.get("transformers") or {}
    hf_decode = {d["batch"]: d.get("tok_s") for d in hf.get("decode", [])}
    rows = []
    for d in r["decode"]:
        theirs = hf_decode.get(d["batch"])
        rows.append(
            {
                "what": f"decode batch {d['batch']}",
                "gptoss_tok_s": d["tok_s"],
                "transformers_tok_s": theirs,
                "speedup": round(d["tok_s"] / theirs, 1) if theirs else None,
                "ratio_to_floor": d["ratio_to_floor"],
            }
        )
    p = r["prefill"]
    theirs = (hf.get("prefill") or {}).get("tok_s")
    rows.append(
        {
            "what": f"prefill {p['tokens']}",
            "gptoss_tok_s": p["tok_s"],
            "transformers_tok_s": theirs,
            "speedup": round(p["tok_s"] / theirs, 1) if theirs else None,
            "ratio_to_floor": p.get("ratio_to_compute_floor"),
        }
    )
    return rows
