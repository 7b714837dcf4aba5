"""What LoRA adapters cost: prefill and decode with one adapter and with four in a batch, against the base."""

from __future__ import annotations

import time

import torch

from gptoss.bench.common import log, sync
from gptoss.errors import GptossError
from gptoss.model import KVCache, StepBatch
from gptoss.model.lora import LoraSet, random_adapter


def lora_costs(model, args, device: str, dtype) -> dict:
    """Prefill and decode with LoRA adapters against the base alone, in this run: one adapter for every
    token, and four adapters in one batch (each sequence its own). All on the slot cache, eagerly, base
    included, so that the ratios isolate what the adapters add."""
    config = model.config
    if args.lora_rank < 1:
        raise GptossError(f"--lora-rank: expected a positive rank, found {args.lora_rank}")
    lora = LoraSet.of(model)
    lora.add_all(
        [
            (f"bench-{k}", random_adapter(config, f"bench-{k}", args.lora_rank, args.lora_experts, seed=k))
            for k in range(4)
        ]
    )
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

    out: dict = {
        "rank": args.lora_rank,
        "targets": lora.adapters[0].targets,
        "adapter_bytes": lora.adapters[0].nbytes(),
        "prefill_sequences": seqs,
        "prefill_tokens": seqs * per_seq,
        "decode_batch": b,
        "decode_tokens": args.decode_tokens,
        "prefill": {},
        "decode": {},
    }
    runs = {
        (phase, name): (prefill if phase == "prefill" else decode)(slots)
        for phase in ("prefill", "decode")
        for name, slots in layouts.items()
    }
    for fn in runs.values():  # warm-up (kernel compilation, allocator)
        fn()
    best: dict = {}
    for _ in range(max(1, args.repeats)):  # interleaved rounds: a busy moment hits every layout alike
        for key, fn in runs.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            best[key] = min(best.get(key, float("inf")), time.perf_counter() - t)
    for (phase, name), seconds in best.items():
        tokens = seqs * per_seq if phase == "prefill" else b * args.decode_tokens
        out[phase][name] = {"seconds": round(seconds, 4), "tok_s": round(tokens / seconds, 2)}
    for phase in ("prefill", "decode"):
        base = out[phase]["base"]["seconds"]
        for name in ("one_adapter", "four_adapters"):
            out[phase][name]["cost_vs_base"] = round(out[phase][name]["seconds"] / base, 3)
    log(
        f"lora rank {args.lora_rank}: prefill x{out['prefill']['one_adapter']['cost_vs_base']} (one), "
        f"x{out['prefill']['four_adapters']['cost_vs_base']} (four); "
        f"decode x{out['decode']['one_adapter']['cost_vs_base']} "
        f"(one), x{out['decode']['four_adapters']['cost_vs_base']} (four) of the base's time"
    )
    lora.adapters.clear()
    return out
