"""One engine's measurements in its own process, for :mod:`gptoss.bench.compare`, which runs
``python -m gptoss.bench.workers ENGINE SPEC.json OUT.json``: the spec names the checkpoint, the threads and the
token ids; the result (prefill, decode, load time, peak RSS) is written as JSON. Nothing heavy is imported
before the engine's own code, so that each process's peak RSS is its engine's."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from gptoss.bench.common import cpu_kernels, timed
from gptoss.bench.floor import decode_step_bytes
from gptoss.bench.memory import checkpoint_files, peak_rss_bytes, warm_page_cache

WARMUP_TOKENS = 16


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _decode_row(batch: int, steps: int, seconds: float) -> dict:
    """``steps`` decode steps of ``batch`` sequences that took ``seconds``."""
    return {
        "batch": batch,
        "tokens": batch * steps,
        "tok_s": round(batch * steps / seconds, 3),
        "ms_per_step": round(1000 * seconds / steps, 1),
    }


def _timings(warm_s: float, load_s: float, prompt: int, prefill_s: float, steps: int, decode_s: float) -> dict:
    """What every engine's worker reports: page-cache warming, load, the prefill and the batch-1 decode."""
    return {
        "page_cache_warm_seconds": round(warm_s, 2),
        "load_seconds": round(load_s, 2),
        "prefill": {"tokens": prompt, "seconds": round(prefill_s, 3), "tok_s": round(prompt / prefill_s, 2)},
        "decode": [_decode_row(1, steps, decode_s)],
    }


def worker_gptoss(spec: dict) -> dict:
    import torch

    from gptoss import kernels
    from gptoss.model import KVCache, StepBatch, Transformer

    _set_threads(spec["threads"])
    warm_s = warm_page_cache(checkpoint_files(spec["model"]))
    t0 = time.perf_counter()
    model = Transformer.from_checkpoint(spec["model"], device="cpu", dtype=torch.bfloat16)
    load_s = time.perf_counter() - t0
    prompt = torch.tensor(spec["prompt"])
    p, steps, b8_steps, wide = len(prompt), spec["decode_tokens"], spec["batch_decode_tokens"], spec["batch"]
    decode_ids = torch.tensor(spec["decode_ids"])
    cache = KVCache(model.config, wide + 1, p + max(steps, b8_steps) + 1, device="cpu", dtype=torch.bfloat16)
    last = lambda n: torch.tensor([n - 1])  # noqa: E731

    with torch.inference_mode():
        w = min(WARMUP_TOKENS, p)
        model.step(prompt[:w], StepBatch.single(w), cache, logits_index=last(w))
        w = min(64, p)  # a prompt-sized step: the prefill kernel variants are chosen here, untimed
        model.step(prompt[:w], StepBatch.single(w), cache, logits_index=last(w))
        prefill_s = timed(lambda: model.step(prompt, StepBatch.single(p), cache, logits_index=last(p)))
        for s in range(1, wide + 1):  # every batch-8 sequence starts from the same cached prompt
            cache.copy_slot(0, s, p)

        def decode(slots: list[int], n: int) -> None:
            for i in range(n):
                batch = StepBatch.of(slots, [p + i] * len(slots), [1] * len(slots))
                toks = decode_ids[[(i + j) % len(decode_ids) for j in range(len(slots))]]
                model.step(toks, batch, cache, logits_index=batch.last_index)

        # one untimed step each way first: the kernel variants for one token and for eight are chosen (timed on
        # this CPU) at their first use, unless a previous run already chose them
        decode([0], 1)
        if wide > 1 and b8_steps:
            decode(list(range(1, wide + 1)), 1)
        decode_s = timed(lambda: decode([0], steps))
        wide_s = timed(lambda: decode(list(range(1, wide + 1)), b8_steps)) if wide > 1 and b8_steps else None
    out = _timings(warm_s, load_s, p, prefill_s, steps, decode_s) | {
        "kernels": kernels.mode(),
        "cpu_kernels": cpu_kernels(model),
        "torch_threads": torch.get_num_threads(),
        "bytes_per_step": {str(b): {k: int(v) for k, v in decode_step_bytes(model, b, p).items()} for b in (1, wide)},
    }
    if wide_s is not None:
        out["decode"].append(_decode_row(wide, b8_steps, wide_s))
    return out


def worker_llama_cpp(spec: dict) -> dict:
    import llama_cpp

    p, steps = len(spec["prompt"]), spec["decode_tokens"]
    warm_s = warm_page_cache([spec["gguf"]])
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=spec["gguf"],
        n_ctx=p + steps + 64,
        n_batch=p,
        n_ubatch=p,
        n_threads=spec["threads"],
        n_threads_batch=spec["threads"],
        verbose=False,
    )
    load_s = time.perf_counter() - t0
    llm.eval(spec["prompt"][:WARMUP_TOKENS])
    llm.reset()
    prefill_s = timed(lambda: llm.eval(spec["prompt"]))
    ids = spec["decode_ids"]

    def decode() -> None:
        for i in range(steps):
            llm.eval([ids[i % len(ids)]])

    decode_s = timed(decode)
    return _timings(warm_s, load_s, p, prefill_s, steps, decode_s) | {
        "version": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
    }


def worker_transformers(spec: dict) -> dict:
    import torch
    import transformers
    from transformers import GptOssForCausalLM, Mxfp4Config

    _set_threads(spec["threads"])
    warm_s = warm_page_cache(checkpoint_files(spec["model"]))
    t0 = time.perf_counter()
    hf = GptOssForCausalLM.from_pretrained(
        spec["model"], dtype=torch.bfloat16, device_map="cpu", quantization_config=Mxfp4Config(dequantize=True)
    )
    hf.eval()
    load_s = time.perf_counter() - t0
    prompt = torch.tensor([spec["prompt"]])
    p, steps = prompt.shape[1], spec["decode_tokens"]
    ids = spec["decode_ids"]
    with torch.inference_mode():
        hf(prompt[:, :WARMUP_TOKENS], use_cache=True, logits_to_keep=1)
        state = {}
        prefill_s = timed(lambda: state.update(out=hf(prompt, use_cache=True, logits_to_keep=1)))
        past = state["out"].past_key_values

        def decode() -> None:
            for i in range(steps):
                hf(torch.tensor([[ids[i % len(ids)]]]), past_key_values=past, use_cache=True, logits_to_keep=1)

        decode_s = timed(decode)
    return _timings(warm_s, load_s, p, prefill_s, steps, decode_s) | {
        "version": transformers.__version__,
        "attention": hf.config._attn_implementation,
        "experts": "dequantized to bfloat16",
    }


WORKERS = {"gptoss": worker_gptoss, "llama.cpp": worker_llama_cpp, "transformers": worker_transformers}


def worker_main(engine: str, spec_file: str, out_file: str) -> int:
    spec = json.loads(Path(spec_file).read_text())
    result = WORKERS[engine](spec)
    result["peak_rss_bytes"] = peak_rss_bytes()
    result["peak_rss_gib"] = round(result["peak_rss_bytes"] / 2**30, 2)
    Path(out_file).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(*sys.argv[1:4]))
