"""``gptoss quantize IN OUT``: pack a dense-expert checkpoint (a fine-tune saved by transformers) into MXFP4,
as the released weights are (4.25 bits a parameter, round-to-nearest-even), streaming tensor by tensor.
The HF layout written loads in transformers and gptoss alike; ``--layout original`` or ``both`` on request.
``--check-tokens N`` then runs both models on N random tokens and prints how far the logits moved (JSON):
it loads both models, so keep it to models that fit in memory twice."""

from __future__ import annotations

import argparse
import json
import sys

from gptoss.errors import GptossError


def add_parser(sub) -> None:
    p = sub.add_parser("quantize", help="pack a dense-expert checkpoint into MXFP4", description=__doc__)
    p.add_argument("input", help="dense-expert checkpoint folder (HF layout)")
    p.add_argument("output", help="folder to write the MXFP4 checkpoint to")
    p.add_argument("--layout", default="hf", choices=["hf", "original", "both"], help="layout of the output")
    p.add_argument("--shard-gb", type=float, default=4.0, help="largest safetensors shard (GB)")
    p.add_argument(
        "--check-tokens",
        type=int,
        default=0,
        help="afterwards, compare both models' float32 logits on this many random tokens (0: no check)",
    )
    p.set_defaults(func=run)


def logits_distance(dense_dir, packed_dir, tokens: int, seed: int = 0) -> dict:
    """Relative L2 distance of the float32 logits of the two checkpoints on ``tokens`` random tokens, the
    largest per position, and how often their top-1 tokens agree."""
    import torch

    from gptoss.model import Transformer

    dense = Transformer.from_checkpoint(dense_dir, dtype=torch.float32)
    ids = torch.randint(0, dense.config.vocab_size, (tokens,), generator=torch.Generator().manual_seed(seed))
    want = dense(ids)
    del dense
    got = Transformer.from_checkpoint(packed_dir, dtype=torch.float32)(ids)
    per_pos = (got - want).norm(dim=-1) / want.norm(dim=-1)
    return {
        "tokens": tokens,
        "logits_rel_err": float((got - want).norm() / want.norm()),
        "logits_rel_err_max_position": float(per_pos.max()),
        "top1_agreement": float((got.argmax(-1) == want.argmax(-1)).float().mean()),
    }


def run(args: argparse.Namespace) -> int:
    from gptoss.model.quantize import quantize_checkpoint

    if args.shard_gb <= 0:
        raise GptossError(f"--shard-gb: expected a positive size, found {args.shard_gb}")
    if args.check_tokens < 0:
        raise GptossError(f"--check-tokens: expected a number >= 0, found {args.check_tokens}")
    out = quantize_checkpoint(
        args.input,
        args.output,
        layout=args.layout,
        max_shard_bytes=int(args.shard_gb * 2**30),
        progress=sys.stderr.isatty(),
    )
    print(f"wrote MXFP4 checkpoint to {out}", file=sys.stderr)
    if args.check_tokens:
        packed = out / "original" if args.layout == "both" else out
        print(
            json.dumps(
                {"input": str(args.input), "output": str(out), **logits_distance(args.input, packed, args.check_tokens)}
            )
        )
    return 0
