"""Hugging Face transformers on the same weights as the model under test, timed in the same run (eager
attention, experts dequantized to the model dtype: what transformers runs without its MXFP4 kernels)."""

from __future__ import annotations

import copy
import time

import torch

from gptoss.bench.common import best_time, log, sync
from gptoss.model.checkpoint import canonical_shapes, hf_names


def build_transformers(model, dtype):
    """Hugging Face ``GptOssForCausalLM`` holding exactly our weights, experts dequantized to ``dtype``,
    eager attention — what transformers runs when its MXFP4 kernels are not installed."""
    from transformers import GptOssConfig, GptOssForCausalLM

    c = model.config
    cfg = GptOssConfig(
        **{k: v for k, v in c.to_hf().items() if k not in ("quantization_config", "architectures", "model_type")}
    )
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


def compare_transformers(model, args, batch_sizes, prompt, device, dtype) -> dict:
    """transformers on ``model``'s weights: its logits against ours, then prefill of ``prompt`` and decode at
    each of ``batch_sizes``, timed as gptoss is."""
    import transformers

    log(f"building transformers {transformers.__version__} on the same weights")
    t0 = time.perf_counter()
    hf = build_transformers(model, dtype)
    sync(device)
    out = {
        "version": transformers.__version__,
        "attention": "eager",
        "experts": f"dequantized to {str(dtype).replace('torch.', '')}",
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    check = prompt[:64]
    with torch.no_grad():
        theirs = hf(check[None]).logits[0].float()
    mine = model(check)
    out["logits_rel_err_vs_gptoss"] = round(float((mine - theirs).norm() / theirs.norm()), 5)
    log(f"transformers logits vs gptoss: {out['logits_rel_err_vs_gptoss']}")

    def timed(fn) -> float:
        return best_time(fn, device, args.repeats)

    with torch.no_grad():
        prefill_s = timed(lambda: hf(prompt[None], use_cache=True, logits_to_keep=1))
        out["prefill"] = {"tokens": prompt.numel(), "tok_s": round(prompt.numel() / prefill_s, 2)}
        log(f"transformers prefill {prompt.numel()}: {out['prefill']['tok_s']} tok/s")
        base = hf(prompt[None], use_cache=True, logits_to_keep=1).past_key_values
        decode = []
        steps = args.transformers_decode_tokens
        for b in batch_sizes:

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
            decode.append(
                {"batch": b, "tok_s": round(b * steps / seconds, 2), "ms_per_step": round(1000 * seconds / steps, 2)}
            )
            log(f"transformers decode batch {b}: {decode[-1]['tok_s']} tok/s")
        out["decode"] = decode
    if device.startswith("cuda"):
        out["peak_allocated_gb_both_models"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    return out
