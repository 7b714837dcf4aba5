"""The floors a measurement is held against: the bytes one decode step must read at the memory bandwidth,
and the matrix FLOPs of one prefill at the tensor cores' peak."""

from __future__ import annotations

NOMINAL_GBS = {"H100": 3000.0, "H200": 4000.0}  # what the floor assumes when --bandwidth-gbs is not given
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16 tensor-core peak (SXM)


def decode_step_bytes(model, batch: int, context: int) -> dict[str, float]:
    """Bytes one decode step must read from memory: every dense weight once (the embedding only for the
    rows used), each expert the batch touches once (uniform routing: E * (1 - (1 - k/E)**B) per layer),
    and every cached key and value the batch attends to."""
    import torch

    c = model.config
    dense = emb = 0
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if (
            t.dtype == torch.uint8
            or name.endswith(("inv_freq", "_weight.weight"))
            or ".mlp.mlp1_bias" in name
            or ".mlp.mlp2_bias" in name
        ):  # experts (packed, or dense "mlpN_weight.weight") are counted below
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
    kv = sum(
        batch * (min(context, c.window(n)) if c.window(n) else context) * per_pos for n in range(c.num_hidden_layers)
    )
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


def floor_bandwidth(given: float | None, gpu_name: str | None, measured: float) -> float:
    """The bandwidth the floor assumes: the one given, else the GPU's nominal one, else the measured copy's."""
    return given or next((v for k, v in NOMINAL_GBS.items() if gpu_name and k in gpu_name), None) or measured


def peak_tflops(gpu_name: str | None) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if gpu_name and k in gpu_name), None)


def decode_row(model, batch: int, steps: int, seconds: float, context: int, bandwidth: float) -> dict:
    """One decode measurement (``steps`` steps of ``batch`` sequences in ``seconds``) beside its floor: the
    bytes one step must read at ``context`` cached positions, at ``bandwidth`` GB/s."""
    tok_s = batch * steps / seconds
    step_bytes = decode_step_bytes(model, batch, context)
    floor = batch / (step_bytes["total"] / (bandwidth * 1e9))
    return {
        "batch": batch,
        "tokens": batch * steps,
        "seconds": round(seconds, 4),
        "tok_s": round(tok_s, 2),
        "ms_per_step": round(1000 * seconds / steps, 3),
        "bytes_per_step": int(step_bytes["total"]),
        "floor_tok_s": round(floor, 1),
        "ratio_to_floor": round(tok_s / floor, 3),
    }


def prefill_row(config, tokens: int, seconds: float) -> dict:
    """One prefill measurement with the matrix TFLOP/s it reached."""
    return {
        "tokens": tokens,
        "seconds": round(seconds, 4),
        "tok_s": round(tokens / seconds, 2),
        "tflops": round(prefill_flops(config, tokens) / seconds / 1e12, 2),
    }
