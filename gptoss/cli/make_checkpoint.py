"""``gptoss make-checkpoint``: write a synthetic random checkpoint (real MXFP4 packing) of a preset or custom size."""

from __future__ import annotations

import argparse
import sys

from gptoss.errors import GptossError

SIZE_FLAGS = {
    "layers": "num_hidden_layers",
    "experts": "num_experts",
    "experts_per_token": "experts_per_token",
    "hidden": "hidden_size",
    "intermediate": "intermediate_size",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "sliding_window": "sliding_window",
    "vocab": "vocab_size",
}


def add_parser(sub) -> None:
    from gptoss.model.config import PRESETS

    p = sub.add_parser("make-checkpoint", help="write a synthetic random checkpoint", description=__doc__)
    p.add_argument("--preset", default="tiny", help=f"one of: {', '.join(PRESETS)} (default tiny)")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument(
        "--layout",
        default="hf",
        choices=["hf", "original", "both"],
        help="hf (root), original (the reference layout) or both (hf at the root, original/ beside it)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="random seed of the weights (the same seed writes the same numbers)"
    )
    p.add_argument(
        "--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="dtype of the non-expert tensors"
    )
    p.add_argument("--shard-gb", type=float, default=4.0, help="largest safetensors shard (GB)")
    for flag in SIZE_FLAGS:
        p.add_argument(f"--{flag.replace('_', '-')}", type=int, default=None, help=f"override {SIZE_FLAGS[flag]}")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from gptoss.model.config import ModelConfig
    from gptoss.model.synthetic import write_checkpoint

    config = ModelConfig.preset(args.preset)
    overrides = {SIZE_FLAGS[f]: getattr(args, f) for f in SIZE_FLAGS if getattr(args, f) is not None}
    if overrides:
        config = config.replace(**overrides)
    if args.shard_gb <= 0:
        raise GptossError(f"--shard-gb: expected a positive size, found {args.shard_gb}")
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    folder = write_checkpoint(
        args.out,
        config,
        layout=args.layout,
        seed=args.seed,
        dtype=dtype,
        max_shard_bytes=int(args.shard_gb * 2**30),
        progress=True,
    )
    gib = config.weight_bytes() / 2**30
    print(
        f"wrote synthetic {args.preset} checkpoint ({config.num_hidden_layers} layers, {config.num_experts} experts, "
        f"~{gib:.2f} GiB of weights, layout {args.layout}) to {folder}",
        file=sys.stderr,
    )
    return 0
