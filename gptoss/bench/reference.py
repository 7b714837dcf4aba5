"""The check before timing: the fast path's logits against the plain-torch reference path on the same weights."""

from __future__ import annotations

import torch

from gptoss import kernels
from gptoss.model import StepBatch, Transformer
from gptoss.model.paged_cache import PagedKVCache


def check_against_reference(model, device: str, length: int = 160) -> dict:
    """Logits of a short prompt (longer than the 128-token band) through the fast path — prefill in two
    chunks, then decode steps — against the reference path (kernels off, no cache) on the same weights.
    Where memory allows, both are also compared with a float32 copy of the reference, and the fast path
    must be as close to it as the bf16 reference is (else within 5e-2 of the bf16 reference)."""
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
    out = {
        "tokens": length,
        "max_rel_err_vs_reference": round(err(fast, ref), 5),
        "argmax_agreement": round(float((fast.argmax(-1) == ref.argmax(-1)).float().mean()), 4),
    }
    dense = sum(t.numel() for t in model.parameters() if t.dtype != torch.uint8) * 4
    if device.startswith("cuda") and model.dtype != torch.float32 and torch.cuda.mem_get_info()[0] > 2 * dense + 4e9:
        named = [
            (n, t)
            for n, t in list(model.named_parameters()) + list(model.named_buffers())
            if not n.endswith("inv_freq")
        ]
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
