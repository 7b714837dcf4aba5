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
from datetime import datetime, timezone

from gptoss.cli.generate import parse_ids


def run_tensor_parallel(args: argparse.Namespace) -> int:
    import torch

    from gptoss import kernels
    from gptoss.cli.bench import NOMINAL_GBS, _log, copy_bandwidth_gbs, decode_step_bytes, emit_json, prefill_flops, summary_table
    from gptoss.engine import LLM, SamplingParams
    from gptoss.engine.llm import check_device, resolve_dtype
    from gptoss.errors import GptossError
    from gptoss.model import ModelConfig

    n = args.tensor_parallel
    if args.compare or args.compare_transformers:
        raise GptossError("--tensor-parallel: --compare and --compare-transformers time one process only")
    batch_sizes = parse_ids(args.batch_sizes, "--batch-sizes")
    device = check_device(args.device)
    is_cuda = device.startswith("cuda")
    tmp = None
    if args.model:
        from gptoss.model.hub import resolve_model_path

        folder, source = resolve_model_path(args.model), args.model
    else:
        from gptoss.model.synthetic import write_checkpoint

        config = ModelConfig.preset(args.preset)
        dtype = resolve_dtype(args.dtype, device, config.weight_bytes())
        tmp = tempfile.TemporaryDirectory(prefix="gptoss-bench-tp-")
        _log(f"writing random {args.preset} weights to {tmp.name} (each rank reads its slices)")
        folder = write_checkpoint(tmp.name, config, layout="original", seed=args.seed,
                                  dtype=torch.float32 if dtype == torch.float32 else torch.bfloat16, tokenizer=False)
        source = f"random {args.preset}"
    max_b = max(batch_sizes + [1])
    ctx = args.prompt_len + args.decode_tokens + 2
    t0 = time.perf_counter()
    llm = LLM(folder, device=device, dtype=args.dtype, max_batch=max_b, max_model_len=ctx, tokenizer=object(),
              kv_cache=args.kv_cache, tensor_parallel_size=n)
    try:
        load_s = time.perf_counter() - t0
        model, engine = llm.model, llm.engine
        config = model.full_config
        gen = torch.Generator().manual_seed(args.seed)

        def prompts(b: int) -> list[list[int]]:
            return [torch.randint(0, config.vocab_size, (args.prompt_len,), generator=gen).tolist() for _ in range(b)]

        def prefill_once() -> float:
            seq = engine.add_request(prompts(1)[0], SamplingParams(max_tokens=1, temperature=0.0, ignore_stop=True))
            start = time.perf_counter()
            while not seq.is_finished:
                engine.step()
            return time.perf_counter() - start

        def decode_once(b: int) -> float:
            params = SamplingParams(max_tokens=args.decode_tokens + 1, temperature=0.0, ignore_stop=True)
            seqs = [engine.add_request(p, params) for p in prompts(b)]
            while any(not s.output_ids for s in seqs):  # prefills (not timed)
                engine.step()
            start = time.perf_counter()
            while any(not s.is_finished for s in seqs):
                engine.step()
            return time.perf_counter() - start

        prefill_s = min(prefill_once() for _ in range(args.repeats))
        _log(f"prefill {args.prompt_len}: {args.prompt_len / prefill_s:.0f} tok/s on {n} ranks")
        gpu_name = torch.cuda.get_device_name() if is_cuda else None
        measured_bw = copy_bandwidth_gbs(device)
        bandwidth = args.bandwidth_gbs or next((v for k, v in NOMINAL_GBS.items() if gpu_name and k in gpu_name),
                                               None) or measured_bw
        decode = []
        for b in batch_sizes:
            seconds = min(decode_once(b) for _ in range(args.repeats))
            tok_s = b * args.decode_tokens / seconds
            step_bytes = decode_step_bytes(model, b, args.prompt_len + args.decode_tokens // 2)
            floor = b / (step_bytes["total"] / (bandwidth * 1e9))
            decode.append({"batch": b, "tokens": b * args.decode_tokens, "seconds": round(seconds, 4),
                           "tok_s": round(tok_s, 2), "ms_per_step": round(1000 * seconds / args.decode_tokens, 3),
                           "bytes_per_step": int(step_bytes["total"]), "floor_tok_s": round(floor, 1),
                           "ratio_to_floor": round(tok_s / floor, 3)})
            _log(f"decode batch {b}: {tok_s:.1f} tok/s on {n} ranks")
        mem = model.memory_bytes()
        flops = prefill_flops(config, args.prompt_len)
        result: dict = {
            "model": source, "device": device, "gpu": gpu_name,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "torch": torch.__version__,
            "triton": kernels.triton_version(), "dtype": str(model.dtype).replace("torch.", ""),
            "config": {"layers": config.num_hidden_layers, "experts": config.num_experts, "hidden": config.hidden_size},
            "kv_cache": llm.engine.runner.kind, "kernels": False, "load_seconds": round(load_s, 3),
            "tensor_parallel": n,
            "weights_bytes": mem,  # rank 0's share
            "weights_gib": round(mem["total"] / 2**30, 3),
            "kv_cache_bytes": llm.engine.runner.local_cache.nbytes(),  # rank 0's share
            "floor": {"bandwidth_gbs": bandwidth, "measured_copy_gbs": measured_bw, "per_rank": True},
            "prefill": {"tokens": args.prompt_len, "seconds": round(prefill_s, 4),
                        "tok_s": round(args.prompt_len / prefill_s, 2), "tflops": round(flops / prefill_s / 1e12, 2)},
            "decode": decode,
            "cuda_graphs": False,
        }
        if is_cuda:
            result["memory"] = {"rank0_peak_allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2)}
        result["table"] = summary_table(result)
    finally:
        llm.close()
        if tmp is not None:
            tmp.cleanup()
    return emit_json(result, args.out)
