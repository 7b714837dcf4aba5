"""``gptoss generate``: complete a prompt (text or token ids) and print text, or JSON with log-probabilities."""

from __future__ import annotations

import argparse
import json
import sys

from gptoss.cli.common import add_model_args, load_llm
from gptoss.errors import GptossError


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="complete a prompt", description=__doc__)
    add_model_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", "-p", help="prompt text (special-token strings in it stay plain text)")
    src.add_argument("--prompt-ids", help="prompt as token ids: '1,2,3' or a JSON list")
    p.add_argument("--max-tokens", type=int, default=64, help="most tokens to generate")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 is greedy")
    p.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling: keep the most likely tokens up to this probability"
    )
    p.add_argument("--top-k", type=int, default=0, help="keep only the K most likely tokens; 0 keeps all")
    p.add_argument("--seed", type=int, default=None, help="sampling seed, for repeatable output (default: random)")
    p.add_argument("--stop-token-ids", default="", help="comma-separated token ids that end generation")
    p.add_argument("--logprobs", type=int, default=None, help="with --json: top-K alternatives per token (0-20)")
    p.add_argument("--json", action="store_true", help="print tokens, text and log-probabilities as JSON")
    p.add_argument(
        "--lora",
        default=None,
        metavar="PATH",
        help="apply this PEFT LoRA adapter (a folder with adapter_config.json and adapter_model.safetensors)",
    )
    p.set_defaults(func=run)


def parse_ids(text: str, what: str) -> list[int]:
    text = text.strip()
    if not text:
        return []
    try:
        values = json.loads(text) if text.startswith("[") else [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise GptossError(f"{what}: expected comma-separated integers or a JSON list, found {text!r}") from None
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise GptossError(f"{what}: expected a list of integers, found {text!r}")
    return values


def run(args: argparse.Namespace) -> int:
    from gptoss.engine import SamplingParams

    if args.logprobs is not None and not args.json:
        raise GptossError("--logprobs: log-probabilities are printed only in the JSON output; add --json")
    params = SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_tokens=args.max_tokens,
        seed=args.seed,
        stop_token_ids=parse_ids(args.stop_token_ids, "--stop-token-ids"),
        logprobs=args.logprobs if args.json else None,
    )
    prompt = parse_ids(args.prompt_ids, "--prompt-ids") if args.prompt_ids is not None else args.prompt
    if not prompt:
        raise GptossError("the prompt is empty")
    llm = load_llm(args, max_batch=1)
    if args.json:
        out = llm.generate([prompt], params)[0]
        tok = llm.tokenizer
        record = {
            "prompt_token_ids": out.prompt_token_ids,
            "token_ids": out.token_ids,
            "text": out.text,
            "finish_reason": out.finish_reason,
        }
        if args.logprobs is not None:
            record["logprobs"] = [
                {
                    "token": lp.token,
                    "text": tok.decode([lp.token]),
                    "logprob": lp.logprob,
                    "top_logprobs": [{"token": t, "text": tok.decode([t]), "logprob": v} for t, v in lp.top],
                }
                for lp in out.logprobs
                if lp is not None
            ]
        print(json.dumps(record, ensure_ascii=False))
        return 0
    for event in llm.stream(prompt, params):
        sys.stdout.write(event.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
