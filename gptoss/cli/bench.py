"""``gptoss bench``: prefill and decode tokens/s and the model's memory, printed as JSON.

Weights are random (built in memory from a preset, no file needed; on CUDA drawn directly in GPU memory)
unless --model names a checkpoint. Absolute times mean something only on the machine that ran them;
compare within one run. The measuring lives in gptoss/bench/ (one process: gptoss/bench/single.py).

On CUDA the fast path runs (Triton kernels, paged KV cache, decode CUDA graphs). Before timing, its logits
on a short prompt are checked against the plain-torch reference path on the same weights ("check").
Each decode figure comes with the bandwidth floor (the bytes one step must read: dense weights, the
experts the batch touches, the KV cache — at --bandwidth-gbs) and the ratio to it. --compare-transformers
times Hugging Face transformers (eager attention, experts dequantized to the model dtype) on the same
weights in the same run.

    gptoss bench --preset gpt-oss-20b --device cuda --prompt-len 2048 --batch-sizes 1,16,64 --compare-transformers

--compare llama.cpp,transformers (CPU, --model CKPT) times gptoss, llama.cpp and transformers side by side on
the same checkpoint in one interleaved run of --rounds rounds, each engine in its own process
(see gptoss/bench/compare.py):

    gptoss bench --device cpu --model CKPT --compare llama.cpp,transformers --threads 2 --prompt-len 512 \
        --llama-cpp-converter /path/to/llama.cpp/convert_hf_to_gguf.py
"""

from __future__ import annotations

import argparse

from gptoss.cli.generate import parse_ids
from gptoss.errors import GptossError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="measure prefill/decode speed and memory (JSON)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default="small", help="model shape when no --model is given (default small)")
    p.add_argument("--model", default=None, help="benchmark this checkpoint instead of random weights")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    p.add_argument("--prompt-len", type=int, default=256, help="prefill length, and the context decode starts from")
    p.add_argument("--decode-tokens", type=int, default=32, help="decode steps timed at each batch size")
    p.add_argument("--batch-sizes", default="1,4", help="decode batch sizes, comma-separated")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats of each measurement (best is reported)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and prompts")
    p.add_argument(
        "--kv-cache",
        default="auto",
        choices=["auto", "paged"],
        help="the paged cache on every device (the one layout; kept for scripts that name it)",
    )
    p.add_argument(
        "--kv-tokens",
        type=int,
        default=None,
        help="reserve a paged KV cache for this many tokens (default: what the runs need)",
    )
    p.add_argument("--no-cuda-graphs", action="store_true", help="decode eagerly on CUDA")
    p.add_argument("--no-check", action="store_true", help="skip the check against the reference path")
    p.add_argument(
        "--compare-transformers",
        action="store_true",
        help="also time Hugging Face transformers on the same weights (needs memory for a dequantized copy)",
    )
    p.add_argument("--transformers-decode-tokens", type=int, default=8, help="decode steps timed for transformers")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for every engine (default: gptoss's default; 2 with --compare)",
    )
    p.add_argument(
        "--compare",
        default=None,
        metavar="ENGINES",
        help="CPU: also time these engines (llama.cpp, transformers) on --model, interleaved, each in its own process",
    )
    p.add_argument("--rounds", type=int, default=3, help="--compare: interleaved rounds (default 3)")
    p.add_argument("--batch-decode-tokens", type=int, default=8, help="--compare: decode steps timed at batch 8")
    p.add_argument("--gguf", default=None, help="--compare: llama.cpp's GGUF of --model")
    p.add_argument(
        "--llama-cpp-converter",
        default=None,
        metavar="PATH",
        help="--compare: llama.cpp's convert_hf_to_gguf.py, to write the GGUF (default $GPTOSS_LLAMA_CPP_CONVERTER)",
    )
    p.add_argument(
        "--transformers-prompt-len",
        type=int,
        default=32,
        help="--compare: transformers' prefill length (it is slow on the CPU)",
    )
    p.add_argument("--transformers-rounds", type=int, default=1, help="--compare: rounds that include transformers")
    p.add_argument("--engine-timeout", type=float, default=3600, help="--compare: seconds one engine run may take")
    p.add_argument(
        "--bandwidth-gbs",
        type=float,
        default=None,
        help="memory bandwidth for the floor (default: 3000 on an H100, else the measured copy bandwidth)",
    )
    p.add_argument(
        "--lora-rank",
        type=int,
        default=0,
        metavar="R",
        help="also time random LoRA adapters of rank R (q, k, v, o): prefill and decode with one adapter "
        "and with four in one batch, against the base alone (section 'lora')",
    )
    p.add_argument("--lora-experts", action="store_true", help="--lora-rank: the adapters also target the experts")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    p.add_argument(
        "--agent",
        action="store_true",
        help="CPU, --model CKPT: time to first token of an agent loop whose history grows step by step, "
        "with prefix reuse, without, and llama.cpp (see gptoss/bench/agent.py)",
    )
    p.add_argument("--agent-history", type=int, default=2000, help="--agent: tokens of history at the first step")
    p.add_argument("--agent-step", type=int, default=300, help="--agent: tokens each step adds (a call and its output)")
    p.add_argument("--agent-steps", type=int, default=8, help="--agent: steps")
    p.add_argument(
        "--agent-cold-steps",
        default=None,
        metavar="STEPS",
        help="--agent: the steps (1-based, comma-separated) at which the engine without prefix reuse is "
        "timed too (default: every step; it re-prefills the whole history, so on a slow CPU fewer)",
    )
    p.add_argument(
        "--tensor-parallel",
        type=int,
        default=1,
        metavar="N",
        help="time the tensor parallel engine over N local ranks (see gptoss/bench/tensor_parallel.py)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The benchmark the flags choose: tensor parallel, the side-by-side comparison, the agent loop, or one process."""
    if args.tensor_parallel != 1:
        if args.tensor_parallel < 1:
            raise GptossError(f"--tensor-parallel: expected a positive number of ranks, found {args.tensor_parallel}")
        if args.compare or args.compare_transformers:
            raise GptossError("--tensor-parallel: --compare and --compare-transformers time one process only")
        from gptoss.bench import tensor_parallel

        return tensor_parallel.run(args, parse_ids(args.batch_sizes, "--batch-sizes"))
    if args.agent and (args.compare or args.compare_transformers):
        raise GptossError("--agent times llama.cpp beside gptoss itself (from --gguf); drop --compare")
    if args.compare:
        return run_side_by_side(args)
    if args.agent:
        from gptoss.bench import agent

        return agent.run(args)
    from gptoss.bench import single

    return single.run(args, parse_ids(args.batch_sizes, "--batch-sizes"))


def run_side_by_side(args: argparse.Namespace) -> int:
    """--compare: the engines named, after the counts the rounds need are checked."""
    from gptoss.bench.common import emit_json
    from gptoss.bench.compare import parse_engines, run_compare

    engines = parse_engines(args.compare)
    for flag in ("rounds", "transformers_rounds", "prompt_len", "decode_tokens"):
        if getattr(args, flag) < 1:
            raise GptossError(f"--{flag.replace('_', '-')}: expected a positive number, found {getattr(args, flag)}")
    return emit_json(run_compare(args, engines), args.out)
