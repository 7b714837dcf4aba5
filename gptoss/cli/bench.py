"""``gptoss bench``: prefill and decode tokens/s and the model's memory, printed as JSON.

Weights are random (built in memory from a preset, no file needed) unless --model names a checkpoint.
Absolute times mean something only on the machine that ran them; compare within one run.
"""

from __future__ import annotations

import argparse
import json
import time

from gptoss.cli.generate import parse_ids


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure prefill/decode speed and memory (JSON)", description=__doc__)
    p.add_argument("--preset", default="small", help="model shape when no --model is given (default small)")
    p.add_argument("--model", default=None, help="benchmark this checkpoint instead of random weights")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--batch-sizes", default="1,4", help="decode batch sizes, comma-separated")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats of each measurement (best is reported)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except OSError:  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(args: argparse.Namespace) -> int:
    import torch

    from gptoss.engine.llm import _auto_dtype
    from gptoss.model import KVCache, ModelConfig, StepBatch, Transformer
    from gptoss.model.synthetic import random_tensors

    batch_sizes = parse_ids(args.batch_sizes, "--batch-sizes")
    torch.manual_seed(args.seed)
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    if args.model:
        from gptoss.model.checkpoint import locate
        from gptoss.model.hub import resolve_model_path

        folder = resolve_model_path(args.model)
        config = locate(folder).config
        dtype = _auto_dtype(args.dtype, args.device, config.weight_bytes())
        model = Transformer.from_checkpoint(folder, device=args.device, dtype=dtype)
        source = str(folder)
    else:
        config = ModelConfig.preset(args.preset)
        dtype = _auto_dtype(args.dtype, args.device, config.weight_bytes())
        model = Transformer.from_tensors(config, random_tensors(config, args.seed, dtype), device=args.device, dtype=dtype)
        source = f"random {args.preset}"
    load_s = time.perf_counter() - t0
    # Touch every weight once so that memory-mapped experts count as resident.
    sum(float(t.view(-1)[:: max(1, t.numel() // 64)].float().sum()) for t in model.buffers() if t.dtype == torch.uint8)
    rss_model = rss_bytes() - rss0
    max_b = max(batch_sizes + [1])
    cache = KVCache(config, max_b, args.prompt_len + args.decode_tokens + 1, device=args.device, dtype=dtype)
    gen = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(0, config.vocab_size, (args.prompt_len,), generator=gen).to(args.device)

    def best(fn) -> float:
        times = []
        for _ in range(max(1, args.repeats)):
            _sync(args.device)
            t = time.perf_counter()
            fn()
            _sync(args.device)
            times.append(time.perf_counter() - t)
        return min(times)

    prefill_s = best(lambda: model.step(prompt, StepBatch.single(args.prompt_len, device=args.device), cache,
                                        logits_index=torch.tensor([args.prompt_len - 1], device=args.device)))
    decode = []
    for b in batch_sizes:
        slots = list(range(b))
        for s in slots:  # every sequence starts from the same cached prompt
            cache.copy_slot(0, s, args.prompt_len) if s else None

        def run_decode() -> None:
            for i in range(args.decode_tokens):
                batch = StepBatch.of(slots, [args.prompt_len + i] * b, [1] * b, device=args.device)
                toks = torch.randint(0, config.vocab_size, (b,), generator=gen).to(args.device)
                model.step(toks, batch, cache, logits_index=batch.last_index)

        seconds = best(run_decode)
        decode.append({"batch": b, "tokens": b * args.decode_tokens, "seconds": round(seconds, 4),
                       "tok_s": round(b * args.decode_tokens / seconds, 2),
                       "ms_per_step": round(1000 * seconds / args.decode_tokens, 3)})
    mem = model.memory_bytes()
    result = {
        "model": source,
        "device": args.device,
        "dtype": str(dtype).replace("torch.", ""),
        "config": {"layers": config.num_hidden_layers, "experts": config.num_experts, "hidden": config.hidden_size},
        "load_seconds": round(load_s, 3),
        "weights_bytes": mem,
        "weights_gib": round(mem["total"] / 2**30, 3),
        "resident_bytes_model": rss_model if args.device == "cpu" else None,
        "kv_cache_bytes": cache.nbytes(),
        "prefill": {"tokens": args.prompt_len, "seconds": round(prefill_s, 4), "tok_s": round(args.prompt_len / prefill_s, 2)},
        "decode": decode,
    }
    print(json.dumps(result, indent=2))
    return 0
