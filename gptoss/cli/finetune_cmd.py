"""``gptoss finetune``: LoRA supervised fine-tuning on Harmony conversations, with TRL and PEFT.

DATA is JSONL, one conversation a line: ``{"messages": [...], "tools": [...]?, "reasoning_effort": ...?}``
with Chat Completions messages; an assistant message's reasoning goes in ``thinking`` (or
``reasoning_content``), its tool calls in ``tool_calls``. Conversations are rendered by gptoss's own
Harmony renderer, as the server renders requests, and the loss is on the assistant's tokens only. The
adapter written to OUT (PEFT's format) is served by ``gptoss serve --lora NAME=OUT``. Needs the
``finetune`` extra (``pip install 'gptoss[finetune]'``); on a CPU only tiny models train in useful time."""

from __future__ import annotations

import argparse
import json
import sys

from gptoss.cli.common import positive_int
from gptoss.errors import GptossError


def add_parser(sub) -> None:
    p = sub.add_parser("finetune", help="LoRA fine-tuning on Harmony conversations (TRL + PEFT)", description=__doc__)
    p.add_argument("--model", "-m", required=True, help="base checkpoint folder (HF layout) or hub id")
    p.add_argument("--data", required=True, help="JSONL file of conversations")
    p.add_argument("--out", "-o", required=True, help="folder to write the adapter to")
    p.add_argument("--rank", type=positive_int, default=8, help="LoRA rank r")
    p.add_argument("--alpha", type=float, default=16, help="LoRA alpha (scaling alpha / r)")
    p.add_argument(
        "--experts",
        action="store_true",
        help="also adapt the experts' gate_up_proj and down_proj (as OpenAI's cookbook does)",
    )
    p.add_argument("--learning-rate", type=float, default=2e-4, help="learning rate")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the data")
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps (-1: --epochs)")
    p.add_argument("--batch-size", type=positive_int, default=1, help="conversations a step")
    p.add_argument("--grad-accum", type=positive_int, default=1, help="gradient accumulation steps")
    p.add_argument("--max-length", type=positive_int, default=4096, help="longest conversation in tokens")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gptoss.finetune.train import finetune

    if args.learning_rate <= 0:
        raise GptossError(f"--learning-rate: expected a positive number, found {args.learning_rate}")
    report = finetune(
        args.model,
        args.data,
        args.out,
        rank=args.rank,
        alpha=args.alpha,
        experts=args.experts,
        learning_rate=args.learning_rate,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        max_length=args.max_length,
        device=args.device,
        seed=args.seed,
        log=True if sys.stderr.isatty() else None,
    )
    print(json.dumps(report))
    print(
        f"gptoss: wrote the adapter to {args.out}; serve it with: gptoss serve --model {args.model} "
        f"--lora NAME={args.out}",
        file=sys.stderr,
    )
    return 0
