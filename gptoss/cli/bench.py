"""``gptoss bench``: prefill and decode tokens/s and the model's memory, printed as JSON.

Weights are random (built in memory from a preset, no file needed; on CUDA drawn directly in GPU memory)
unless --model names a checkpoint. Absolute times mean something only on the machine that ran them;
compare within one run.

On CUDA the fast path runs (Triton kernels, paged KV cache, decode CUDA graphs). Before timing, its logits
on a short prompt are checked against the plain-torch reference path on the same weights ("check").
Each decode figure comes with the bandwidth floor (the bytes one step must read: dense weights, the
experts the batch touches, the KV cache — at --bandwidth-gbs) and the ratio to it. --compare-transformers
times Hugging Face transformers (eager attention, experts dequantized to the model dtype) on the same
weights in the same run.

    gptoss bench --preset gpt-oss-20b --device cuda --prompt-len 2048 --batch-sizes 1,16,64 --compare-transformers

--compare llama.cpp,transformers (CPU, --model CKPT) times gptoss, llama.cpp and transformers side by side on
the same checkpoint in one interleaved run of --rounds rounds, each engine in its own process
(see gptoss/cli/bench_compare.py):

    gptoss bench --device cpu --model CKPT --compare llama.cpp,transformers --threads 2 --prompt-len 512 \
        --llama-cpp-converter /path/to/llama.cpp/convert_hf_to_gguf.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone

from gptoss.cli.generate import parse_ids

NOMINAL_GBS = {"H100": 3000.0, "H200": 4000.0}  # what the floor assumes when --bandwidth-gbs is not given
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16 tensor-core peak (SXM)


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure prefill/decode speed and memory (JSON)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", help="model shape when no --model is given (default small)")
    p.add_argument("--model", default=None, help="benchmark this checkpoint instead of random weights")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    p.add_argument("--prompt-len", type=int, default=256, help="prefill length, and the context decode starts from")
    p.add_argument("--decode-tokens", type=int, default=32, help="decode steps timed at each batch size")
    p.add_argument("--batch-sizes", default="1,4", help="decode batch sizes, comma-separated")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats of each measurement (best is reported)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and prompts")
    p.add_argument("--kv-cache", default="auto", choices=["auto", "paged"],
                   help="the paged cache on every device (the one layout; kept for scripts that name it)")
    p.add_argument("--kv-tokens", type=int, default=None,
                   help="reserve a paged KV cache for this many tokens (default: what the runs need)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="decode eagerly on CUDA")
    p.add_argument("--no-check", action="store_true", help="skip the check against the reference path")
    p.add_argument("--compare-transformers", action="store_true",
                   help="also time Hugging Face transformers on the same weights (needs memory for a dequantized copy)")
    p.add_argument("--transformers-decode-tokens", type=int, default=8, help="decode steps timed for transformers")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for every engine (default: gptoss's default; 2 with --compare)")
    p.add_argument("--compare", default=None, metavar="ENGINES",
                   help="CPU: also time these engines (llama.cpp, transformers) on --model, interleaved, "
                        "each in its own process")
    p.add_argument("--rounds", type=int, default=3, help="--compare: interleaved rounds (default 3)")
    p.add_argument("--batch-decode-tokens", type=int, default=8, help="--compare: decode steps timed at batch 8")
    p.add_argument("--gguf", default=None, help="--compare: llama.cpp's GGUF of --model")
    p.add_argument("--llama-cpp-converter", default=None, metavar="PATH",
                   help="--compare: llama.cpp's convert_hf_to_gguf.py, to write the GGUF "
                        "(default $GPTOSS_LLAMA_CPP_CONVERTER)")
    p.add_argument("--transformers-prompt-len", type=int, default=32,
                   help="--compare: transformers' prefill length (it is slow on the CPU)")
    p.add_argument("--transformers-rounds", type=int, default=1, help="--compare: rounds that include transformers")
    p.add_argument("--engine-timeout", type=float, default=3600, help="--compare: seconds one engine run may take")
    p.add_argument("--bandwidth-gbs", type=float, default=None,
                   help="memory bandwidth for the floor (default: 3000 on an H100, else the measured copy bandwidth)")
    p.add_argument("--lora-rank", type=int, default=0, metavar="R",
                   help="also time random LoRA adapters of rank R (q, k, v, o): prefill and decode with one adapter "
                        "and with four in one batch, against the base alone (section 'lora')")
    p.add_argument("--lora-experts", action="store_true", help="--lora-rank: the adapters also target the experts")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    p.add_argument("--agent", action="store_true",
                   help="CPU, --model CKPT: time to first token of an agent loop whose history grows step by step, "
                        "with prefix reuse, without, and llama.cpp (see gptoss/cli/bench_agent.py)")
    p.add_argument("--agent-history", type=int, default=2000, help="--agent: tokens of history at the first step")
    p.add_argument("--agent-step", type=int, default=300, help="--agent: tokens each step adds (a call and its output)")
    p.add_argument("--agent-steps", type=int, default=8, help="--agent: steps")
    p.add_argument("--agent-cold-steps", default=None, metavar="STEPS",
                   help="--agent: the steps (1-based, comma-separated) at which the engine without prefix reuse is "
                        "timed too (default: every step; it re-prefills the whole history, so on a slow CPU fewer)")
    p.add_argument("--tensor-parallel", type=int, default=1, metavar="N",
                   help="time the tensor parallel engine over N local ranks (see gptoss/cli/bench_tp.py)")
    p.set_defaults(func=run)


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except OSError:  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def best_time(fn, device, repeats: int) -> float:
    """Best of ``repeats`` timed calls after one warm-up call (kernel compilation, graph capture, allocator)."""
    fn()
    times = []
    for _ in range(max(1, repeats)):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- weights
def random_tensors_on(config, device: str, dtype, seed: int = 0):
    """Random weights of ``config`` drawn directly on ``device`` (no file, no host copy), with the scales
    of a real checkpoint: packed expert bytes uniform over all E2M1 codes with E8M0 scales near 2**-7
    (as quantizing std-0.02 weights gives), dense weights std 0.02, biases 0.01, norms near 1."""
    import torch

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


def copy_bandwidth_gbs(device: str) -> float:
    """Measured device-memory bandwidth: bytes read plus written by a large copy, per second."""
    import torch

    n = (1 << 30) if device.startswith("cuda") else (1 << 27)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    del src, dst
    return round(2 * n / best / 1e9, 1)


# ----------------------------------------------------------------------------- floors
def decode_step_bytes(model, batch: int, context: int) -> dict[str, float]:
    """Bytes one decode step must read from memory: every dense weight once (the embedding only for the
    rows used), each expert the batch touches once (uniform routing: E * (1 - (1 - k/E)**B) per layer),
    and every cached key and value the batch attends to."""
    import torch

    c = model.config
    dense = emb = 0
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.dtype == torch.uint8 or name.endswith(("inv_freq", "_weight.weight")) or ".mlp.mlp1_bias" in name \
                or ".mlp.mlp2_bias" in name:  # experts (packed, or dense "mlpN_weight.weight") are counted below
            continue
        if name == "embedding.weight":
            emb = batch * t.shape[1] * t.element_size()
        else:
            dense += t.numel() * t.element_size()
    e, k = c.num_experts, c.experts_per_token
    touched = e * (1 - (1 - k / e) ** batch)
    mlp = model.block[0].mlp
    weights = [t for w in (mlp.mlp1_weight, mlp.mlp2_weight) for t in w.buffers()]  # blocks + scales, or dense
    per_expert = sum(x[0].numel() * x.element_size() for x in weights + [mlp.mlp1_bias, mlp.mlp2_bias])
    experts = c.num_hidden_layers * touched * per_expert
    per_pos = 2 * c.num_key_value_heads * c.head_dim * model.unembedding.weight.element_size()
    kv = sum(batch * (min(context, c.window(n)) if c.window(n) else context) * per_pos for n in range(c.num_hidden_layers))
    return {"dense_weights": dense + emb, "experts": experts, "kv_cache": kv, "total": dense + emb + experts + kv}


def prefill_flops(config, tokens: int) -> float:
    """Matrix FLOPs of one prefill: 2 per active weight per token, plus causal/banded attention."""
    c = config
    h, d, hq, hk = c.hidden_size, c.head_dim, c.num_attention_heads, c.num_key_value_heads
    attn_w = h * d * (hq + 2 * hk) + hq * d * h
    expert_w = c.experts_per_token * 3 * h * c.intermediate_size
    per_token = 2 * (c.num_hidden_layers * (attn_w + expert_w + h * c.num_experts) + c.vocab_size * h / tokens)
    attn = 0.0
    for n in range(c.num_hidden_layers):
        w = c.window(n)
        keys = tokens * (tokens + 1) / 2 if not w else sum(min(i + 1, w) for i in range(tokens))
        attn += 4 * hq * d * keys
    return per_token * tokens + attn


# ----------------------------------------------------------------------------- runs
def run(args: argparse.Namespace) -> int:
    import torch

    from gptoss import kernels
    from gptoss.engine.llm import check_device, resolve_dtype
    from gptoss.model import ModelConfig, Transformer
    from gptoss.model.synthetic import random_tensors

    if getattr(args, "tensor_parallel", 1) != 1:
        from gptoss.cli.bench_tp import run_tensor_parallel

        if args.tensor_parallel < 1:
            from gptoss.errors import GptossError

            raise GptossError(f"--tensor-parallel: expected a positive number of ranks, found {args.tensor_parallel}")
        return run_tensor_parallel(args)
    if args.compare:
        return run_compare_cli(args)
    if args.agent:
        from gptoss.cli.bench_agent import run_agent

        return run_agent(args)
    batch_sizes = parse_ids(args.batch_sizes, "--batch-sizes")
    device = check_device(args.device)
    if args.threads:
        import os

        os.environ["GPTOSS_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    is_cuda = device.startswith("cuda")
    torch.manual_seed(args.seed)
    if is_cuda:
        torch.cuda.reset_peak_memory_stats()
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
        tensors = random_tensors_on(config, device, dtype, args.seed) if is_cuda else random_tensors(config, args.seed, dtype)
        model = Transformer.from_tensors(config, tensors, device=device, dtype=dtype)
        source = f"random {args.preset}"
    _sync(device)
    load_s = time.perf_counter() - t0
    # Touch every weight once so that memory-mapped experts count as resident.
    sum(float(t.view(-1)[:: max(1, t.numel() // 64)].float().sum()) for t in model.buffers() if t.dtype == torch.uint8)
    rss_model = rss_bytes() - rss0
    weights_on_gpu = torch.cuda.memory_allocated() if is_cuda else None
    gpu_name = torch.cuda.get_device_name() if is_cuda else None
    kind = "paged"
    fast = kind == "paged" and kernels.active(model.unembedding.weight)
    cpu_fast = kernels.cpu_active(model.unembedding.weight)  # the native CPU kernels (GPTOSS_KERNELS=auto)
    cpu_kernels = None
    if cpu_fast:
        from gptoss.kernels import cpu

        cpu_kernels = {"isa": cpu.chosen_isa(), "threads": cpu.num_threads(), "choices": cpu.choices()}
    _log(f"{source}: {model.memory_bytes()['total'] / 2**30:.2f} GiB of weights in {load_s:.1f}s on {gpu_name or device}; "
         f"kv cache {kind}, kernels {'on' if fast else 'off'}"
         + (f", native CPU kernels {cpu_kernels['isa']} on {cpu_kernels['threads']} threads" if cpu_fast else ""))

    result: dict = {
        "model": source,
        "device": device,
        "gpu": gpu_name,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "triton": kernels.triton_version(),
        "dtype": str(dtype).replace("torch.", ""),
        "config": {"layers": config.num_hidden_layers, "experts": config.num_experts, "hidden": config.hidden_size},
        "kv_cache": kind,
        "kernels": fast,
        "cpu_kernels": cpu_kernels,
        "load_seconds": round(load_s, 3),
    }
    if not args.no_check and is_cuda:
        result["check"] = check_against_reference(model, device, kind)
        _log(f"check against the reference path: {result['check']}")

    max_b = max(batch_sizes + [1])
    prompt_len = args.prompt_len
    ctx = prompt_len + args.decode_tokens + 1
    gen = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(0, config.vocab_size, (prompt_len,), generator=gen).to(device)

    def best(fn) -> float:
        return best_time(fn, device, args.repeats)

    graphs = None
    from gptoss.model.paged_cache import PagedKVCache

    max_len = max(ctx, args.kv_tokens or 0)
    blocks = max((max_b + 1) * -(-ctx // 16), -(-(args.kv_tokens or 0) // 16))
    cache = PagedKVCache(config, max_b + 1, max_len, num_blocks=2 + blocks, max_step_tokens=max(prompt_len, max_b),
                         device=device, dtype=dtype)
    if is_cuda and fast and not args.no_cuda_graphs:
        from gptoss.engine.cuda_graphs import DecodeGraphs

        graphs = DecodeGraphs(model, cache, max_batch=max_b, sizes=tuple(batch_sizes))

    def run_prefill() -> None:
        meta = cache.prepare([0], [0], [prompt_len])
        model.step_paged(prompt, meta, cache, logits_index=meta.last_index)
        cache.finish(meta)

    def decode_fn(b: int):
        slots = list(range(1, b + 1))
        for s in slots:  # each sequence its own blocks, as long as the prompt
            cache.allocate(s, 0, prompt_len)
            cache.release_band(s, prompt_len)
        first = torch.randint(0, config.vocab_size, (b,), generator=gen).to(device)

        def run_decode() -> None:
            toks = first
            for i in range(args.decode_tokens):
                meta = cache.prepare(slots, [prompt_len + i] * b, [1] * b)
                if graphs is not None and graphs.supports(b):
                    logits = graphs.run(toks, meta)
                else:
                    logits = model.step_paged(toks, meta, cache, logits_index=meta.last_index)
                cache.finish(meta)
                toks = logits.argmax(-1)  # greedy, on the device: no host round trip

        return run_decode

    prefill_s = best(run_prefill)
    _log(f"prefill {prompt_len}: {prompt_len / prefill_s:.0f} tok/s")
    bandwidth = args.bandwidth_gbs or next((v for k, v in NOMINAL_GBS.items() if gpu_name and k in gpu_name), None)
    measured_bw = copy_bandwidth_gbs(device)
    bandwidth = bandwidth or measured_bw
    decode = []
    for b in batch_sizes:
        seconds = best(decode_fn(b))
        tok_s = b * args.decode_tokens / seconds
        step_bytes = decode_step_bytes(model, b, prompt_len + args.decode_tokens // 2)
        floor = b / (step_bytes["total"] / (bandwidth * 1e9))
        decode.append({"batch": b, "tokens": b * args.decode_tokens, "seconds": round(seconds, 4), "tok_s": round(tok_s, 2),
                       "ms_per_step": round(1000 * seconds / args.decode_tokens, 3),
                       "bytes_per_step": int(step_bytes["total"]), "floor_tok_s": round(floor, 1),
                       "ratio_to_floor": round(tok_s / floor, 3)})
        _log(f"decode batch {b}: {tok_s:.1f} tok/s ({decode[-1]['ratio_to_floor']:.2f} of the bandwidth floor)")
    mem = model.memory_bytes()
    flops = prefill_flops(config, prompt_len)
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if gpu_name and k in gpu_name), None)
    prefill = {"tokens": prompt_len, "seconds": round(prefill_s, 4), "tok_s": round(prompt_len / prefill_s, 2),
               "tflops": round(flops / prefill_s / 1e12, 2)}
    if peak:
        prefill["compute_floor_tok_s"] = round(prompt_len / (flops / (peak * 1e12)), 1)
        prefill["ratio_to_compute_floor"] = round(prefill["tok_s"] / prefill["compute_floor_tok_s"], 3)
    b1 = decode_step_bytes(model, 1, prompt_len)
    result |= {
        "weights_bytes": mem,
        "weights_gib": round(mem["total"] / 2**30, 3),
        "resident_bytes_model": rss_model if not is_cuda else weights_on_gpu,
        "kv_cache_bytes": cache.nbytes(),
        "floor": {"bandwidth_gbs": bandwidth, "measured_copy_gbs": measured_bw,
                  "batch1_bytes_per_token": {k: int(v) for k, v in b1.items()},
                  "batch1_floor_tok_s": round(1 / (b1["total"] / (bandwidth * 1e9)), 1),
                  "peak_bf16_tflops": peak},
        "prefill": prefill,
        "decode": decode,
        "cuda_graphs": bool(graphs and graphs.graphs),
    }
    if is_cuda:
        free, total = torch.cuda.mem_get_info()
        result["memory"] = {
            "weights_gb": round(weights_on_gpu / 1e9, 2),
            "kv_cache_gb": round(cache.nbytes() / 1e9, 2),
            "kv_cache_tokens": (cache.allocators["full"].num_blocks - 1) * cache.block_size if kind == "paged" and "full" in cache.allocators else None,
            "peak_allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
            "free_gb": round(free / 1e9, 2),
            "total_gb": round(total / 1e9, 2),
        }
    if args.compare_transformers:
        graphs = cache = None  # give their memory to the transformers model
        if is_cuda:
            torch.cuda.empty_cache()
        result["transformers"] = compare_transformers(model, args, batch_sizes, prompt, device, dtype, result)
    if args.lora_rank:
        graphs = cache = None
        result["lora"] = lora_costs(model, args, device, dtype)
    result["table"] = summary_table(result)
    return emit_json(result, args.out)


def lora_costs(model, args, device: str, dtype) -> dict:
    """Prefill and decode with LoRA adapters against the base alone, in this run: one adapter for every
    token, and four adapters in one batch (each sequence its own). All on the slot cache, eagerly, base
    included, so that the ratios isolate what the adapters add."""
    import torch

    from gptoss.model import KVCache, StepBatch
    from gptoss.model.lora import LoraSet, random_adapter

    config = model.config
    if args.lora_rank < 1:
        from gptoss.errors import GptossError

        raise GptossError(f"--lora-rank: expected a positive rank, found {args.lora_rank}")
    lora = LoraSet.of(model)
    lora.add_all([(f"bench-{k}", random_adapter(config, f"bench-{k}", args.lora_rank, args.lora_experts, seed=k))
                  for k in range(4)])
    seqs, per_seq = 4, max(1, args.prompt_len // 4)
    b = 4
    ctx = args.prompt_len + args.decode_tokens + 1
    cache = KVCache(config, b, ctx, device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(0, config.vocab_size, (seqs * per_seq,), generator=gen).to(device)
    prefill_batch = StepBatch.of(list(range(seqs)), [0] * seqs, [per_seq] * seqs, device=device)
    layouts = {"base": [0] * seqs, "one_adapter": [1] * seqs, "four_adapters": [1, 2, 3, 4]}

    def prefill(slots):
        def run():
            with lora.active([(s, per_seq) for s in slots]):
                model.step(prompt, prefill_batch, cache, logits_index=prefill_batch.last_index)
        return run

    def decode(slots):
        def run():
            for i in range(args.decode_tokens):
                batch = StepBatch.of(list(range(b)), [per_seq + i] * b, [1] * b, device=device)
                toks = torch.randint(0, config.vocab_size, (b,), generator=gen).to(device)
                with lora.active([(s, 1) for s in slots]):
                    model.step(toks, batch, cache, logits_index=batch.last_index)
        return run

    out: dict = {"rank": args.lora_rank, "targets": lora.adapters[0].targets, "adapter_bytes": lora.adapters[0].nbytes(),
                 "prefill_sequences": seqs, "prefill_tokens": seqs * per_seq, "decode_batch": b,
                 "decode_tokens": args.decode_tokens, "prefill": {}, "decode": {}}
    runs = {(phase, name): (prefill if phase == "prefill" else decode)(slots)
            for phase in ("prefill", "decode") for name, slots in layouts.items()}
    for fn in runs.values():  # warm-up (kernel compilation, allocator)
        fn()
    best: dict = {}
    for _ in range(max(1, args.repeats)):  # interleaved rounds: a busy moment hits every layout alike
        for key, fn in runs.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            best[key] = min(best.get(key, float("inf")), time.perf_counter() - t)
    for (phase, name), seconds in best.items():
        tokens = seqs * per_seq if phase == "prefill" else b * args.decode_tokens
        out[phase][name] = {"seconds": round(seconds, 4), "tok_s": round(tokens / seconds, 2)}
    for phase in ("prefill", "decode"):
        base = out[phase]["base"]["seconds"]
        for name in ("one_adapter", "four_adapters"):
            out[phase][name]["cost_vs_base"] = round(out[phase][name]["seconds"] / base, 3)
    _log(f"lora rank {args.lora_rank}: prefill x{out['prefill']['one_adapter']['cost_vs_base']} (one), "
         f"x{out['prefill']['four_adapters']['cost_vs_base']} (four); decode x{out['decode']['one_adapter']['cost_vs_base']} "
         f"(one), x{out['decode']['four_adapters']['cost_vs_base']} (four) of the base's time")
    lora.adapters.clear()
    return out


def emit_json(result: dict, out: str | None) -> int:
    """Print the benchmark's JSON, and also write it to ``out`` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    return 0


def run_compare_cli(args: argparse.Namespace) -> int:
    from gptoss.cli.bench_compare import parse_engines, run_compare

    engines = parse_engines(args.compare)
    for flag in ("rounds", "transformers_rounds", "prompt_len", "decode_tokens"):
        if getattr(args, flag) < 1:
            from gptoss.errors import GptossError

            raise GptossError(f"--{flag.replace('_', '-')}: expected a positive number, found {getattr(args, flag)}")
    result = run_compare(args, engines)
    return emit_json(result, args.out)


def check_against_reference(model, device: str, kind: str, length: int = 160) -> dict:
    """Logits of a short prompt (longer than the 128-token band) through the fast path — prefill in two
    chunks, then decode steps — against the reference path (kernels off, no cache) on the same weights.
    Where memory allows, both are also compared with a float32 copy of the reference, and the fast path
    must be as close to it as the bf16 reference is (else within 5e-2 of the bf16 reference)."""
    import torch

    from gptoss import kernels
    from gptoss.model import StepBatch, Transformer
    from gptoss.model.paged_cache import PagedKVCache

    tokens = torch.randint(0, model.config.vocab_size, (length,), generator=torch.Generator().manual_seed(1)).to(device)
    with kernels.use("off"):
        ref = model(tokens)
    cache = PagedKVCache(model.config, 1, length + 1, device=device, dtype=model.dtype)
    outs, start = [], 0
    for n in [length // 2, length // 2 - 8] + [1] * 8:
        outs.append(model.step(tokens[start : start + n], StepBatch.single(n, start=start, device=device), cache))
        start += n
    fast = torch.cat(outs)
    err = lambda a, b: float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max())  # noqa: E731 - worst position
    out = {"tokens": length, "max_rel_err_vs_reference": round(err(fast, ref), 5),
           "argmax_agreement": round(float((fast.argmax(-1) == ref.argmax(-1)).float().mean()), 4)}
    dense = sum(t.numel() for t in model.parameters() if t.dtype != torch.uint8) * 4
    if device.startswith("cuda") and model.dtype != torch.float32 and torch.cuda.mem_get_info()[0] > 2 * dense + 4e9:
        named = [(n, t) for n, t in list(model.named_parameters()) + list(model.named_buffers()) if not n.endswith("inv_freq")]
        ref32_model = Transformer.from_tensors(model.config, iter(named), device=device, dtype=torch.float32)
        with kernels.use("off"):
            ref32 = ref32_model(tokens)
        del ref32_model
        out["max_rel_err_vs_float32"] = round(err(fast, ref32), 5)
        out["reference_bf16_rel_err_vs_float32"] = round(err(ref, ref32), 5)
        out["ok"] = out["max_rel_err_vs_float32"] <= max(2 * out["reference_bf16_rel_err_vs_float32"], 2e-2)
    else:
        out["ok"] = out["max_rel_err_vs_reference"] <= 5e-2
    return out


def build_transformers(model, dtype):
    """Hugging Face ``GptOssForCausalLM`` holding exactly our weights, experts dequantized to ``dtype``,
    eager attention — what transformers runs when its MXFP4 kernels are not installed."""
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    from gptoss.model.checkpoint import canonical_shapes, hf_names

    c = model.config
    cfg = GptOssConfig(**{k: v for k, v in c.to_hf().items() if k not in ("quantization_config", "architectures", "model_type")})
    cfg._attn_implementation = "eager"
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # allocate in dtype directly: a float32 20b would not fit next to ours
    try:
        with torch.device(model.device):
            hf = GptOssForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    hf.eval()
    params = dict(hf.named_parameters())
    hq, hk, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    with torch.no_grad():
        for name in canonical_shapes(c):
            if name.endswith(".scales"):
                continue
            module_name = name.rpartition(".")[0]
            if name.endswith(".blocks"):
                w = model.get_submodule(module_name)  # MXFP4Weight: [E, rows, cols] -> HF [E, cols, rows]
                target = hf_names(name)[0].removesuffix("_blocks")
                for e in range(c.num_experts):
                    params[target][e].copy_(w.dequantize(e, dtype).T)
                continue
            ours = model.get_parameter(name)
            targets = hf_names(name)
            if len(targets) == 3:  # q, k, v
                for t, part in zip(targets, ours.split([hq * d, hk * d, hk * d])):
                    params[t].copy_(part)
            else:
                params[targets[0]].copy_(ours)
    return hf


def compare_transformers(model, args, batch_sizes, prompt, device, dtype, ours) -> dict:
    import torch
    import transformers

    _log(f"building transformers {transformers.__version__} on the same weights")
    t0 = time.perf_counter()
    hf = build_transformers(model, dtype)
    _sync(device)
    out = {"version": transformers.__version__, "attention": "eager", "experts": f"dequantized to {str(dtype).replace('torch.', '')}",
           "build_seconds": round(time.perf_counter() - t0, 2)}
    check = prompt[:64]
    with torch.no_grad():
        theirs = hf(check[None]).logits[0].float()
    mine = model(check)
    out["logits_rel_err_vs_gptoss"] = round(float((mine - theirs).norm() / theirs.norm()), 5)
    _log(f"transformers logits vs gptoss: {out['logits_rel_err_vs_gptoss']}")

    def timed(fn) -> float:
        return best_time(fn, device, args.repeats)

    with torch.no_grad():
        prefill_s = timed(lambda: hf(prompt[None], use_cache=True, logits_to_keep=1))
        out["prefill"] = {"tokens": prompt.numel(), "tok_s": round(prompt.numel() / prefill_s, 2)}
        _log(f"transformers prefill {prompt.numel()}: {out['prefill']['tok_s']} tok/s")
        base = hf(prompt[None], use_cache=True, logits_to_keep=1).past_key_values
        decode = []
        steps = args.transformers_decode_tokens
        for b in batch_sizes:
            import copy

            def run_decode(b=b) -> None:
                past = copy.deepcopy(base)
                past.batch_repeat_interleave(b)
                toks = torch.zeros(b, 1, dtype=torch.long, device=device)
                for _ in range(steps):
                    logits = hf(toks, past_key_values=past, use_cache=True).logits
                    toks = logits[:, -1].argmax(-1, keepdim=True)

            try:
                seconds = timed(run_decode)
            except torch.cuda.OutOfMemoryError:
                decode.append({"batch": b, "error": "out of memory"})
                torch.cuda.empty_cache()
                continue
            decode.append({"batch": b, "tok_s": round(b * steps / seconds, 2), "ms_per_step": round(1000 * seconds / steps, 2)})
            _log(f"transformers decode batch {b}: {decode[-1]['tok_s']} tok/s")
        out["decode"] = decode
    if device.startswith("cuda"):
        out["peak_allocated_gb_both_models"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    return out


def summary_table(r: dict) -> list[dict]:
    """Rows of the results table: what, gptoss tok/s, transformers tok/s, speedup, ratio to the floor."""
    hf = r.get("transformers") or {}
    hf_decode = {d["batch"]: d.get("tok_s") for d in hf.get("decode", [])}
    rows = []
    for d in r["decode"]:
        theirs = hf_decode.get(d["batch"])
        rows.append({"what": f"decode batch {d['batch']}", "gptoss_tok_s": d["tok_s"], "transformers_tok_s": theirs,
                     "speedup": round(d["tok_s"] / theirs, 1) if theirs else None, "ratio_to_floor": d["ratio_to_floor"]})
    p = r["prefill"]
    theirs = (hf.get("prefill") or {}).get("tok_s")
    rows.append({"what": f"prefill {p['tokens']}", "gptoss_tok_s": p["tok_s"], "transformers_tok_s": theirs,
                 "speedup": round(p["tok_s"] / theirs, 1) if theirs else None,
                 "ratio_to_floor": p.get("ratio_to_compute_floor")})
    return rows
