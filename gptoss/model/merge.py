"""Merge a LoRA adapter into its base: a dense-expert checkpoint (HF layout) whose weights are
``W + scaling * B @ A``, streaming tensor by tensor as :mod:`gptoss.model.quantize` writes.

An MXFP4 base's experts are unpacked (exactly) before the expert deltas are added, so the merged
checkpoint has dense experts; ``gptoss quantize`` (or ``--quantize mxfp4`` on load) packs them again.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from gptoss.errors import CheckpointError
from gptoss.model.checkpoint import CheckpointReader, canonical_shapes, locate
from gptoss.model.mxfp4 import dequantize
from gptoss.model.peft_adapter import load_adapter
from gptoss.model.quantize import _DTYPES, _copy_side_files, _write_hf
from gptoss.model.synthetic import _make_folder


def merge_adapter(
    base: str | os.PathLike, adapter: str | os.PathLike, out: str | os.PathLike, max_shard_bytes: int = 4 * 2**30
) -> Path:
    """Write ``base`` with ``adapter`` merged into it to ``out`` (HF layout, dense experts)."""
    reader = CheckpointReader(locate(base))
    config = reader.config
    lora = load_adapter(adapter, config)  # checked whole before anything is written
    out = Path(out)
    if out.resolve() == Path(reader.files.folder).resolve():
        raise CheckpointError(f"{out}: the output folder must differ from the input")
    _make_folder(out)
    packed = reader.experts == "mxfp4"
    attn_dtype = _DTYPES[
        reader._meta(next(n for n in reader.files.tensor_files if n.endswith("q_proj.weight")))[1]
        if reader.files.layout == "hf"
        else reader._meta("block.0.attn.qkv.weight")[1]
    ]

    def canonical(name: str) -> torch.Tensor:
        layer = int(name.split(".")[1]) if name.startswith("block.") else None
        delta = lora.layers[layer] if layer is not None else None
        if name.endswith("_weight.weight"):  # experts, [E, in, out]
            stem = name.removesuffix(".weight")
            if packed:
                w = dequantize(reader.get(stem + ".blocks"), reader.get(stem + ".scales"), torch.float32).transpose(
                    1, 2
                )
            else:
                w = reader.get(name).float()
            a, b = (delta.mlp1_a, delta.mlp1_b) if ".mlp1_" in name else (delta.mlp2_a, delta.mlp2_b)
            if a is not None:
                w = w + torch.einsum("eor,eri->eio", b, a)
            return w.contiguous()
        t = reader.get(name)
        if delta is not None and name.endswith("attn.qkv.weight") and delta.qkv_a is not None:
            return (t.float() + delta.qkv_b @ delta.qkv_a).to(t.dtype)
        if delta is not None and name.endswith("attn.out.weight") and delta.out_a is not None:
            return (t.float() + delta.out_b @ delta.out_a).to(t.dtype)
        return t

    def dtype_of(name: str) -> torch.dtype:
        if name.endswith("_weight.weight"):
            return attn_dtype if packed else _DTYPES[reader._meta(next(iter(_hf_or_canonical(reader, name))))[1]]
        return _DTYPES[reader._meta(next(iter(_hf_or_canonical(reader, name))))[1]]

    _write_hf(out, config, canonical_shapes(config, "dense"), canonical, dtype_of, max_shard_bytes, experts="dense")
    _copy_side_files(Path(reader.files.folder), out)
    return out


def _hf_or_canonical(reader: CheckpointReader, name: str):
    from gptoss.model.checkpoint import hf_names

    return hf_names(name) if reader.files.layout == "hf" else (name,)
