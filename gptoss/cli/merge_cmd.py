"""``gptoss merge BASE ADAPTER OUT``: merge a PEFT LoRA adapter into its base and write the result as a
checkpoint with dense experts (HF layout), streaming tensor by tensor; ``gptoss quantize OUT OUT-mxfp4``
packs its experts back into MXFP4."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("merge", help="merge a LoRA adapter into a checkpoint", description=__doc__)
    p.add_argument("base", help="base checkpoint folder (MXFP4 or dense experts)")
    p.add_argument("adapter", help="PEFT LoRA adapter folder")
    p.add_argument("output", help="folder to write the merged checkpoint to")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gptoss.model.merge import merge_adapter

    out = merge_adapter(args.base, args.adapter, args.output)
    print(f"wrote the merged checkpoint (dense experts) to {out}", file=sys.stderr)
    return 0
