"""Synthetic checkpoints: random weights with real MXFP4 packing, in either file layout, any size.

No real weights can be downloaded where tests and benchmarks run, so they use these. Every tensor is
drawn from its own seeded generator (seed + name), so the HF and original layouts of one seed hold
exactly the same numbers. Files are written streaming (one tensor in memory at a time) so that a
full-size gpt-oss-20b (about 13 GB) can be written on a machine with less memory than that.
"""

from __future__ import annotations

import functools
import json
import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import Callable, Iterator

import torch

from gptoss.errors import GptossError
from gptoss.model import mxfp4
from gptoss.model.checkpoint import HF_INDEX, canonical_shapes, hf_names, hf_shapes
from gptoss.model.config import ModelConfig

SYNTHETIC_MARKER = "gptoss_synthetic.json"


class SyntheticCheckpointWarning(UserWarning):
    """Issued whenever a synthetic (random-weight) checkpoint is loaded: its output is noise."""


def is_synthetic_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` (or, for an ``original/`` layout folder, its parent) carries the synthetic marker."""
    folder = Path(folder)
    return (folder / SYNTHETIC_MARKER).is_file() or (folder.parent / SYNTHETIC_MARKER).is_file()


def announce_synthetic(folder: str | os.PathLike, stacklevel: int = 3) -> None:
    warnings.warn(
        f"SYNTHETIC DEMO CHECKPOINT ({folder}): random weights, its output is noise",
        SyntheticCheckpointWarning,
        stacklevel=stacklevel,
    )


_DTYPE_NAMES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.uint8: "U8"}


def _generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))


def random_tensor(config: ModelConfig, name: str, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """The canonical tensor ``name`` of the synthetic model ``(config, seed)``."""
    shape, kind = canonical_shapes(config)[name]
    g = _generator(seed, name)
    if kind == "uint8":
        blocks, scales = _expert_matrix(config, seed, name.rsplit(".", 1)[0])
        return blocks if name.endswith(".blocks") else scales
    if name.endswith("norm.scale"):
        t = 1.0 + 0.1 * torch.randn(shape, generator=g)
    elif name.endswith("attn.sinks"):
        t = torch.randn(shape, generator=g)
    elif name.endswith("embedding.weight"):
        t = torch.randn(shape, generator=g)
    else:  # linear weights and biases
        t = (
            0.02 * torch.randn(shape, generator=g)
            if name.endswith("weight")
            else 0.01 * torch.randn(shape, generator=g)
        )
    return t.to(dtype)


@functools.lru_cache(maxsize=1)
def _expert_matrix(config: ModelConfig, seed: int, base: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw float expert weights ``[E, rows, cols]`` (std 0.02) one expert at a time and quantize them."""
    shape, _ = canonical_shapes(config)[base + ".blocks"]
    g = _generator(seed, base)
    rows, cols = shape[1], shape[2] * mxfp4.BLOCK_SIZE
    blocks = torch.empty(shape, dtype=torch.uint8)
    scales = torch.empty(shape[:-1], dtype=torch.uint8)
    for e in range(shape[0]):
        blocks[e], scales[e] = mxfp4.quantize(torch.randn(rows, cols, generator=g) * 0.02)
    return blocks, scales


def random_tensors(
    config: ModelConfig, seed: int = 0, dtype: torch.dtype = torch.bfloat16
) -> Iterator[tuple[str, torch.Tensor]]:
    """All canonical tensors of the synthetic model, one at a time."""
    for name in canonical_shapes(config):
        yield name, random_tensor(config, name, seed, dtype)


# ----------------------------------------------------------------------------- streaming writer
def _header(entries: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> tuple[bytes, list[int]]:
    meta: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    sizes = []
    for name, dtype, shape in entries:
        size = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        meta[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
        sizes.append(size)
    raw = json.dumps(meta, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, sizes


def write_safetensors_stream(
    path: Path, entries: list[tuple[str, torch.dtype, tuple[int, ...]]], produce: Callable[[str], torch.Tensor]
) -> int:
    """Write a safetensors file whose tensors are produced one at a time by ``produce(name)``.
    (The safetensors library needs every tensor in memory at once; this needs one.) Returns bytes written."""
    header, sizes = _header(entries)
    tmp = path.with_suffix(path.suffix + ".partial")
    with open(tmp, "wb") as f:
        f.write(header)
        for (name, dtype, shape), size in zip(entries, sizes):
            t = produce(name)
            if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                raise AssertionError(f"{name}: produced {t.dtype} {tuple(t.shape)}, planned {dtype} {shape}")
            data = t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""
            assert len(data) == size
            f.write(data)
    os.replace(tmp, path)
    return len(header) + sum(sizes)


# ----------------------------------------------------------------------------- checkpoint writer
def _make_folder(out: Path) -> None:
    """``out`` and its parents as folders, or a GptossError naming the file in the way."""
    for part in [out, *out.parents]:
        if part.exists() or part.is_symlink():
            if not part.is_dir():
                what = "is a file" if part == out else f"is under {part}, which is a file"
                raise GptossError(f"cannot write a checkpoint to {out}: it {what}, not a folder")
            break
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GptossError(f"cannot write a checkpoint to {out}: {exc.strerror}") from None


def write_checkpoint(
    out: str | os.PathLike,
    config: ModelConfig,
    layout: str = "hf",
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_bytes: int = 4 * 2**30,
    progress: bool = False,
    tokenizer: bool = True,
) -> Path:
    """Write a synthetic checkpoint. ``layout``: ``hf`` (root), ``original`` (``original/``) or ``both``
    (the way the official repositories ship). Returns the folder."""
    if layout not in ("hf", "original", "both"):
        raise GptossError(f"unknown layout {layout!r} (choose hf, original or both)")
    out = Path(out)
    _make_folder(out)
    bar = None
    if progress:
        from tqdm import tqdm

        total = config.weight_bytes() * (2 if layout == "both" else 1)
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="writing checkpoint", disable=None)
    cache: dict[str, torch.Tensor] = {}

    def canonical(name: str) -> torch.Tensor:
        # q, k and v of one layer come from one canonical qkv tensor; keep it until all three are written.
        if name not in cache:
            cache.clear()
            cache[name] = random_tensor(config, name, seed, torch.float32 if dtype == torch.float32 else dtype)
        return cache[name]

    def tick(t: torch.Tensor) -> torch.Tensor:
        if bar is not None:
            bar.update(t.numel() * t.element_size())
        return t

    if layout in ("hf", "both"):
        _write_hf(out, config, dtype, max_shard_bytes, canonical, tick)
    if layout in ("original", "both"):
        _write_original(out / "original" if layout == "both" else out, config, dtype, max_shard_bytes, canonical, tick)
    if bar is not None:
        bar.close()
    if tokenizer:
        from gptoss.hf_tokenizer import write_hf_tokenizer_files
        from gptoss.tokenizer import seed_bpe_file

        seed_bpe_file(out)
        write_hf_tokenizer_files(out)  # tokenizer.json + tokenizer_config.json, as the official repositories carry
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 199998, "eos_token_id": [200002, 199999, 200012], "pad_token_id": 199999}, indent=2)
    )
    (out / SYNTHETIC_MARKER).write_text(
        json.dumps(
            {
                "synthetic": True,
                "note": "Random weights with real MXFP4 packing, written by `gptoss make-checkpoint`. "
                "Not a trained model: its text is noise.",
                "seed": seed,
                "layout": layout,
            },
            indent=2,
        )
    )
    return out


def _float_dtype(kind: str, dtype: torch.dtype) -> torch.dtype:
    return torch.uint8 if kind == "uint8" else dtype


def _shards(entries: list[tuple[str, torch.dtype, tuple[int, ...]]], max_bytes: int) -> list[list]:
    shards: list[list] = [[]]
    size = 0
    for entry in entries:
        n = torch.Size(entry[2]).numel() * torch.empty((), dtype=entry[1]).element_size()
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += n
    return shards


def _write_hf(out: Path, config: ModelConfig, dtype, max_shard_bytes, canonical, tick) -> None:
    shapes = hf_shapes(config)
    entries = []
    owner: dict[str, tuple[str, int, int]] = {}  # hf name -> (canonical, row start, row end)
    for name in canonical_shapes(config):
        start = 0
        for hf in hf_names(name):
            shape, kind = shapes[hf]
            entries.append((hf, _float_dtype(kind, dtype), shape))
            owner[hf] = (name, start, start + shape[0])
            start += shape[0]

    def produce(hf: str) -> torch.Tensor:
        name, a, b = owner[hf]
        t = canonical(name)
        if len(hf_names(name)) > 1:
            t = t[a:b]
        return tick(t.to(_float_dtype(shapes[hf][1], dtype)))

    shards = _shards(entries, max_shard_bytes)
    weight_map = {}
    total = 0
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" if len(shards) > 1 else "model.safetensors"
        total += write_safetensors_stream(out / file, shard, produce)
        weight_map |= {e[0]: file for e in shard}
    if len(shards) > 1:
        (out / HF_INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (out / "config.json").write_text(json.dumps(config.to_hf(), indent=2))


def _write_original(out: Path, config: ModelConfig, dtype, max_shard_bytes, canonical, tick) -> None:
    out.mkdir(parents=True, exist_ok=True)
    shapes = canonical_shapes(config)
    entries = [(n, _float_dtype(kind, dtype), shape) for n, (shape, kind) in shapes.items()]
    shards = _shards(entries, max_shard_bytes)
    for i, shard in enumerate(shards):
        file = f"model--{i + 1:05d}-of-{len(shards):05d}.safetensors" if len(shards) > 1 else "model.safetensors"
        write_safetensors_stream(out / file, shard, lambda n: tick(canonical(n).to(_float_dtype(shapes[n][1], dtype))))
    (out / "config.json").write_text(json.dumps(config.to_original(), indent=2))
