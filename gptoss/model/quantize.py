"""Write an MXFP4 checkpoint from a dense-expert one (a fine-tune that transformers saved in floats).

Streaming: tensors are read memory-mapped and written one at a time, and each expert tensor is
quantized expert by expert (:func:`gptoss.model.mxfp4.quantize_experts`, round-to-nearest-even under the
OCP shared scale, as the released weights are packed), so the peak memory is about one layer's expert
tensor, not the model. Other tensors (attention, router, embeddings, norms) are copied as stored.
The HF layout written loads in transformers (its MXFP4 path) and in gptoss; the original layout on request.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from gptoss.errors import CheckpointError
from gptoss.model.checkpoint import HF_INDEX, CheckpointReader, canonical_shapes, hf_names, locate
from gptoss.model.mxfp4 import quantize_experts
from gptoss.model.synthetic import SYNTHETIC_MARKER, _make_folder, _shards, write_safetensors_stream

_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "U8": torch.uint8}


def quantize_checkpoint(
    src: str | os.PathLike,
    out: str | os.PathLike,
    layout: str = "hf",
    max_shard_bytes: int = 4 * 2**30,
    progress: bool = False,
) -> Path:
    """Read the dense-expert checkpoint ``src`` (HF layout) and write its MXFP4 twin to ``out`` in
    ``layout`` ``hf``, ``original`` or ``both`` (HF at the root, ``original/`` beside it, as released).
    Tokenizer and generation files beside the weights are copied. Returns ``out``."""
    if layout not in ("hf", "original", "both"):
        raise CheckpointError(f"unknown layout {layout!r} (choose hf, original or both)")
    reader = CheckpointReader(locate(src))
    if reader.experts != "dense":
        raise CheckpointError(f"{src}: its experts are already MXFP4 (nothing to quantize)")
    out = Path(out)
    if out.resolve() == Path(reader.files.folder).resolve():
        raise CheckpointError(f"{out}: the output folder must differ from the input")
    _make_folder(out)
    config = reader.config
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=config.num_hidden_layers * 2 * (2 if layout == "both" else 1),
            unit="expert tensor",
            desc="quantizing",
            disable=None,
        )
    packed: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # the last quantized expert tensor

    def canonical(name: str) -> torch.Tensor:
        """A canonical tensor of the MXFP4 model: expert blocks/scales quantized on demand, others as stored."""
        if name.endswith((".blocks", ".scales")):
            dense = name.rsplit(".", 1)[0] + ".weight"
            if dense not in packed:
                packed.clear()
                packed[dense] = quantize_experts(reader.get(dense))
                if bar is not None:
                    bar.update(1)
            return packed[dense][0 if name.endswith(".blocks") else 1]
        return reader.get(name)

    def dtype_of(name: str) -> torch.dtype:
        if name.endswith((".blocks", ".scales")):
            return torch.uint8
        stored = (
            [reader._meta(n)[1] for n in hf_names(name)] if reader.files.layout == "hf" else [reader._meta(name)[1]]
        )
        return _DTYPES[stored[0]]

    shapes = canonical_shapes(config, "mxfp4")
    if layout in ("hf", "both"):
        _write_hf(out, config, shapes, canonical, dtype_of, max_shard_bytes)
    if layout in ("original", "both"):
        target = out / "original" if layout == "both" else out
        target.mkdir(parents=True, exist_ok=True)
        entries = [(n, dtype_of(n), shape) for n, (shape, _) in shapes.items()]
        _write_files(
            target, entries, lambda n: canonical(n).to(dtype_of(n)), max_shard_bytes, "model--{i:05d}-of-{n:05d}"
        )
        (target / "config.json").write_text(json.dumps(config.to_original(), indent=2))
    if bar is not None:
        bar.close()
    _copy_side_files(Path(reader.files.folder), out)
    return out


def _write_hf(out: Path, config, shapes, canonical, dtype_of, max_shard_bytes: int, experts: str = "mxfp4") -> None:
    from gptoss.model.checkpoint import hf_shapes

    hf = hf_shapes(config, experts)
    entries, owner = [], {}
    for name in shapes:
        start = 0
        for piece in hf_names(name):
            shape = hf[piece][0]
            entries.append((piece, dtype_of(name), shape))
            owner[piece] = (name, start, start + shape[0])
            start += shape[0]
    held: dict[str, torch.Tensor] = {}  # q, k and v are rows of one canonical qkv: read it once

    def produce(piece: str) -> torch.Tensor:
        name, a, b = owner[piece]
        if name not in held:
            held.clear()
            held[name] = canonical(name)
        t = held[name]
        return (t[a:b] if len(hf_names(name)) > 1 else t).to(dtype_of(name))

    weight_map = _write_files(out, entries, produce, max_shard_bytes, "model-{i:05d}-of-{n:05d}")
    data = config.to_hf()  # carries quantization_config {quant_method: mxfp4}, as the release does
    if experts == "dense":
        data.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(data, indent=2))
    if len(set(weight_map.values())) > 1:
        (out / HF_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))


def _write_files(folder: Path, entries, produce, max_shard_bytes: int, pattern: str) -> dict[str, str]:
    shards = _shards(entries, max_shard_bytes)
    weight_map = {}
    for i, shard in enumerate(shards):
        file = (pattern.format(i=i + 1, n=len(shards)) + ".safetensors") if len(shards) > 1 else "model.safetensors"
        write_safetensors_stream(folder / file, shard, produce)
        weight_map |= {e[0]: file for e in shard}
    return weight_map


def _copy_side_files(src: Path, out: Path) -> None:
    """Tokenizer, generation config, chat template and the synthetic marker: regular files only."""
    for path in sorted(src.iterdir()):
        if path.is_symlink() or not path.is_file():
            continue
        if path.suffix == ".safetensors" or path.name in ("config.json", HF_INDEX):
            continue
        shutil.copyfile(path, out / path.name)
    if (src.parent / SYNTHETIC_MARKER).is_file() and not (out / SYNTHETIC_MARKER).exists():
        shutil.copyfile(src.parent / SYNTHETIC_MARKER, out / SYNTHETIC_MARKER)
