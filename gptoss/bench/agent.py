"""``gptoss bench --agent``: time to first token of an agent loop, with and without prefix reuse, and llama.cpp.

An agent sends its whole conversation again at every step: a history of ``--agent-history`` tokens (default
2,000) that grows by ``--agent-step`` tokens (default 300: a tool call and its output) for ``--agent-steps``
steps (default 8). Each step's time to first token is measured, in one interleaved run, for

* ``gptoss`` — the engine with automatic prefix caching (it computes only what the previous step did not),
* ``gptoss_cold`` — the same engine and weights with ``prefix_caching=False`` (everything prefilled again),
* ``llama_cpp`` — llama-cpp-python on the checkpoint's GGUF (it keeps the previous prompt's evaluated prefix),
  when it is installed and a GGUF is given or can be converted (see :mod:`gptoss.bench.compare`).

Every engine sees the same token ids. One JSON document comes out (``--out`` also writes it to a file).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from gptoss.bench.common import cpu_name, emit_json, log
from gptoss.bench.compare import find_gguf, llama_cpp_version
from gptoss.bench.memory import checkpoint_files, warm_page_cache
from gptoss.engine import LLM, SamplingParams
from gptoss.errors import GptossError
from gptoss.model import Transformer

GREEDY_ONE = SamplingParams(temperature=0.0, max_tokens=1, ignore_stop=True)


def _log(msg: str) -> None:
    log(msg, "bench --agent")


def history(vocab: int, start: int, step: int, steps: int, seed: int) -> list[list[int]]:
    """The prompt of each step: a random history, each step the previous prompt plus ``step`` new tokens."""
    import random

    rng = random.Random(seed)
    tokens = [rng.randrange(vocab) for _ in range(start)]
    prompts = []
    for _ in range(steps):
        prompts.append(list(tokens))
        tokens += [rng.randrange(vocab) for _ in range(step)]
    return prompts


def run(args) -> int:
    """Time each step of the agent loop on every engine; print the JSON."""
    if not args.model:
        raise GptossError("--agent needs --model CKPT (the checkpoint every engine runs)")
    threads = args.threads or 2
    torch.set_num_threads(threads)
    os.environ.setdefault("GPTOSS_NUM_THREADS", str(threads))
    from gptoss.kernels import cpu

    cpu.set_num_threads(threads)
    folder = Path(args.model)
    warm_page_cache(checkpoint_files(str(folder)))
    model = Transformer.from_checkpoint(folder, device="cpu", dtype=torch.bfloat16)
    prompts = history(
        min(model.config.vocab_size, 200_000), args.agent_history, args.agent_step, args.agent_steps, args.seed
    )
    context = len(prompts[-1]) + 64
    engines = {
        "gptoss": LLM(model, max_batch=1, max_model_len=context, tokenizer=object()),
        "gptoss_cold": LLM(model, max_batch=1, max_model_len=context, tokenizer=object(), prefix_caching=False),
    }
    skipped: dict[str, str] = {}
    llama = open_llama_cpp(args, folder, context, threads, skipped)
    cold_steps = set(range(1, len(prompts) + 1))
    if args.agent_cold_steps:
        cold_steps = {int(s) for s in args.agent_cold_steps.split(",") if s.strip()}
    steps = [time_step(i, prompts, engines, llama, cold_steps) for i in range(len(prompts))]
    result = {
        "benchmark": "agent_loop",
        "model": str(folder),
        "cpu": cpu_name(),
        "load_average": os.getloadavg(),
        "threads": threads,
        "dtype": "bfloat16",
        "llama_cpp": llama_cpp_version(),
        "skipped": skipped,
        "steps": steps,
        "summary": summary(steps, llama is not None),
    }
    return emit_json(result, args.out)


def open_llama_cpp(args, folder: Path, context: int, threads: int, skipped: dict[str, str]):
    """llama.cpp on the checkpoint's GGUF, or None with the reason in ``skipped``."""
    if llama_cpp_version() is None:
        skipped["llama_cpp"] = "llama-cpp-python is not installed"
        return None
    gguf, why = find_gguf(folder, args.gguf, args.llama_cpp_converter)
    if gguf is None:
        skipped["llama_cpp"] = why
        return None
    import llama_cpp

    warm_page_cache([str(gguf)])
    return llama_cpp.Llama(
        model_path=str(gguf), n_ctx=context, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False
    )


def ttft_gptoss(llm: LLM, prompt: list[int]) -> tuple[float, int]:
    """Seconds to the first token of ``prompt``, and how many of its tokens were found in the prefix cache."""
    t0 = time.perf_counter()
    seq = llm.engine.add_request(prompt, GREEDY_ONE)
    while not seq.output_ids:
        llm.engine.step()
    seconds = time.perf_counter() - t0
    while not seq.is_finished:
        llm.engine.step()
    return seconds, seq.cached_tokens or 0


def ttft_llama(llama, prompt: list[int]) -> float:
    t0 = time.perf_counter()
    llama.create_completion(prompt, max_tokens=1, temperature=0.0)
    return time.perf_counter() - t0


def time_step(i: int, prompts: list[list[int]], engines: dict[str, LLM], llama, cold_steps: set[int]) -> dict:
    """Step ``i`` (0-based) on every engine: its time to first token and cached tokens, and the ratios."""
    prompt = prompts[i]
    row = {"step": i + 1, "history_tokens": len(prompt), "new_tokens": len(prompt) - (len(prompts[i - 1]) if i else 0)}
    for name, llm in engines.items():
        if name == "gptoss_cold" and i + 1 not in cold_steps:
            continue
        seconds, cached = ttft_gptoss(llm, prompt)
        row[f"{name}_ttft_s"] = round(seconds, 3)
        row[f"{name}_cached_tokens"] = cached
    if llama is not None:
        row["llama_cpp_ttft_s"] = round(ttft_llama(llama, prompt), 3)
    if "gptoss_cold_ttft_s" in row:
        row["cold_over_reuse"] = round(row["gptoss_cold_ttft_s"] / row["gptoss_ttft_s"], 2)
    if llama is not None:
        row["llama_cpp_over_reuse"] = round(row["llama_cpp_ttft_s"] / row["gptoss_ttft_s"], 2)
    _log(json.dumps(row))
    return row


def summary(steps: list[dict], with_llama: bool) -> dict:
    """Reuse's time per new token over the warm steps (all but the first), and the ratios near 4k tokens."""
    warm = steps[1:]
    timed = [r for r in steps if "cold_over_reuse" in r]
    at4k = min(
        (r for r in timed if r["history_tokens"] >= 4000),
        key=lambda r: r["history_tokens"],
        default=timed[-1] if timed else {"cold_over_reuse": None, "history_tokens": None},
    )
    return {
        "reuse_ttft_s_per_new_token": round(
            sum(r["gptoss_ttft_s"] for r in warm) / sum(r["new_tokens"] for r in warm), 5
        )
        if warm
        else None,
        "reuse_ttft_first_warm_step_s": warm[0]["gptoss_ttft_s"] if warm else None,
        "reuse_ttft_last_step_s": steps[-1]["gptoss_ttft_s"],
        "cold_over_reuse_at_4k": at4k["cold_over_reuse"],
        "history_at_4k": at4k["history_tokens"],
        "llama_cpp_over_reuse_warm_steps": round(
            sum(r["llama_cpp_ttft_s"] for r in warm) / sum(r["gptoss_ttft_s"] for r in warm), 2
        )
        if with_llama and warm
        else None,
    }
