"""Checkpoint layouts and loading.

Two layouts exist, holding the same numbers under different names:

* ``hf`` — the Hugging Face layout at the root of ``openai/gpt-oss-*``: ``config.json``,
  ``model.safetensors.index.json`` and shards, tensors ``model.layers.N.self_attn.q_proj.weight`` ...
* ``original`` — the reference layout in ``original/``: ``config.json``, ``*.safetensors`` with tensors
  ``block.N.attn.qkv.weight`` ...

Our modules are named as the original layout, so its names are the canonical ones; the HF layout maps
onto them (q/k/v projections concatenate into ``qkv``). Files are opened memory-mapped and tensors are
read one at a time as the model is filled, so peak memory stays near the size of the model.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import mmap
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from gptoss.errors import CheckpointError
from gptoss.model.config import ModelConfig
from gptoss.model.mxfp4 import BLOCK_SIZE, BYTES_PER_BLOCK

HF_INDEX = "model.safetensors.index.json"
EXPERT_FORMATS = ("mxfp4", "dense")


# ----------------------------------------------------------------------------- expected tensors
def canonical_shapes(config: ModelConfig, experts: str = "mxfp4") -> dict[str, tuple[tuple[int, ...], str]]:
    """Canonical (original-layout) tensor names -> (shape, kind) where kind is 'float' or 'uint8'.

    ``experts``: ``mxfp4`` (packed ``blocks`` / ``scales``, as released) or ``dense`` (float expert weights
    as transformers' ``save_pretrained`` writes them after fine-tuning: ``mlp1_weight.weight [E, hidden,
    2*inter]`` and ``mlp2_weight.weight [E, inter, hidden]``, each expert's matrix stored input-major)."""
    if experts not in EXPERT_FORMATS:
        raise CheckpointError(f"unknown expert format {experts!r} (choose {' or '.join(EXPERT_FORMATS)})")
    h, i, e, v = config.hidden_size, config.intermediate_size, config.num_experts, config.vocab_size
    hq, hk, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    qkv = d * (hq + 2 * hk)
    out: dict[str, tuple[tuple[int, ...], str]] = {"embedding.weight": ((v, h), "float")}
    for n in range(config.num_hidden_layers):
        p = f"block.{n}"
        out |= {
            f"{p}.attn.norm.scale": ((h,), "float"),
            f"{p}.attn.qkv.weight": ((qkv, h), "float"),
            f"{p}.attn.qkv.bias": ((qkv,), "float"),
            f"{p}.attn.sinks": ((hq,), "float"),
            f"{p}.attn.out.weight": ((h, hq * d), "float"),
            f"{p}.attn.out.bias": ((h,), "float"),
            f"{p}.mlp.norm.scale": ((h,), "float"),
            f"{p}.mlp.gate.weight": ((e, h), "float"),
            f"{p}.mlp.gate.bias": ((e,), "float"),
        }
        if experts == "mxfp4":
            out |= {
                f"{p}.mlp.mlp1_weight.blocks": ((e, 2 * i, h // BLOCK_SIZE, BYTES_PER_BLOCK), "uint8"),
                f"{p}.mlp.mlp1_weight.scales": ((e, 2 * i, h // BLOCK_SIZE), "uint8"),
                f"{p}.mlp.mlp1_bias": ((e, 2 * i), "float"),
                f"{p}.mlp.mlp2_weight.blocks": ((e, h, i // BLOCK_SIZE, BYTES_PER_BLOCK), "uint8"),
                f"{p}.mlp.mlp2_weight.scales": ((e, h, i // BLOCK_SIZE), "uint8"),
                f"{p}.mlp.mlp2_bias": ((e, h), "float"),
            }
        else:
            out |= {
                f"{p}.mlp.mlp1_weight.weight": ((e, h, 2 * i), "float"),
                f"{p}.mlp.mlp1_bias": ((e, 2 * i), "float"),
                f"{p}.mlp.mlp2_weight.weight": ((e, i, h), "float"),
                f"{p}.mlp.mlp2_bias": ((e, h), "float"),
            }
    out["norm.scale"] = ((h,), "float")
    out["unembedding.weight"] = ((v, h), "float")
    return out


# HF name pieces for each canonical per-layer suffix. A tuple means: concatenate these along dim 0.
_HF_LAYER = {
    "attn.norm.scale": "input_layernorm.weight",
    "attn.qkv.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "attn.qkv.bias": ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
    "attn.sinks": "self_attn.sinks",
    "attn.out.weight": "self_attn.o_proj.weight",
    "attn.out.bias": "self_attn.o_proj.bias",
    "mlp.norm.scale": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.router.weight",
    "mlp.gate.bias": "mlp.router.bias",
    "mlp.mlp1_weight.blocks": "mlp.experts.gate_up_proj_blocks",
    "mlp.mlp1_weight.scales": "mlp.experts.gate_up_proj_scales",
    "mlp.mlp1_bias": "mlp.experts.gate_up_proj_bias",
    "mlp.mlp2_weight.blocks": "mlp.experts.down_proj_blocks",
    "mlp.mlp2_weight.scales": "mlp.experts.down_proj_scales",
    "mlp.mlp2_bias": "mlp.experts.down_proj_bias",
    "mlp.mlp1_weight.weight": "mlp.experts.gate_up_proj",
    "mlp.mlp2_weight.weight": "mlp.experts.down_proj",
}
_HF_GLOBAL = {
    "embedding.weight": "model.embed_tokens.weight",
    "norm.scale": "model.norm.weight",
    "unembedding.weight": "lm_head.weight",
}


def hf_names(canonical: str) -> tuple[str, ...]:
    """The HF tensor name(s) holding a canonical tensor (q, k, v for ``qkv``)."""
    if canonical in _HF_GLOBAL:
        return (_HF_GLOBAL[canonical],)
    _, n, rest = canonical.split(".", 2)
    names = _HF_LAYER[rest]
    names = names if isinstance(names, tuple) else (names,)
    return tuple(f"model.layers.{n}.{x}" for x in names)


def hf_shapes(config: ModelConfig, experts: str = "mxfp4") -> dict[str, tuple[tuple[int, ...], str]]:
    """HF tensor names -> (shape, kind)."""
    hq, hk, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    split = {"q_proj": hq * d, "k_proj": hk * d, "v_proj": hk * d}
    out = {}
    for name, (shape, kind) in canonical_shapes(config, experts).items():
        names = hf_names(name)
        if len(names) == 1:
            out[names[0]] = (shape, kind)
        else:
            for hf in names:
                rows = split[hf.split(".")[-2]]
                out[hf] = ((rows, *shape[1:]), kind)
    return out


# ----------------------------------------------------------------------------- locating files
@dataclass
class CheckpointFiles:
    folder: Path
    layout: str  # "hf" or "original"
    config: ModelConfig
    tensor_files: dict[str, Path]  # tensor name (in its layout) -> file

    @property
    def experts(self) -> str:
        """``dense`` when the expert weights are stored as floats (no ``_blocks`` / ``_scales``), else ``mxfp4``."""
        dense = "model.layers.0.mlp.experts.gate_up_proj" if self.layout == "hf" else "block.0.mlp.mlp1_weight.weight"
        packed = (
            "model.layers.0.mlp.experts.gate_up_proj_blocks"
            if self.layout == "hf"
            else "block.0.mlp.mlp1_weight.blocks"
        )
        return "dense" if dense in self.tensor_files and packed not in self.tensor_files else "mxfp4"


def detect_layout(folder: Path, layout: str = "auto") -> tuple[Path, str]:
    """Find which layout a folder holds; returns (folder holding the tensors, layout)."""
    if layout not in ("auto", "hf", "original"):
        raise CheckpointError(f"unknown checkpoint layout {layout!r} (choose auto, hf or original)")
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder")

    def kind_of(path: Path) -> str | None:
        cfg = path / "config.json"
        if not cfg.is_file() or not any(path.glob("*.safetensors")):
            return None
        try:
            data = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{cfg}: not valid JSON ({exc})") from None
        return "hf" if isinstance(data, dict) and "model_type" in data else "original"

    candidates = [(folder, kind_of(folder))]
    if (folder / "original").is_dir():
        candidates.append((folder / "original", kind_of(folder / "original")))
    for path, kind in candidates:
        if kind and (layout == "auto" or layout == kind):
            return path, kind
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: no config.json (expected a gpt-oss checkpoint folder)")
    raise CheckpointError(
        f"{folder}: no *.safetensors files"
        + (f" in the {layout} layout" if layout != "auto" else "")
        + " (expected model weights beside config.json)"
    )


def locate(folder: str | os.PathLike, layout: str = "auto") -> CheckpointFiles:
    path, kind = detect_layout(Path(folder), layout)
    config = ModelConfig.from_file(path / "config.json")
    index_path = path / HF_INDEX
    files: dict[str, Path] = {}
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{index_path}: not valid JSON ({_short(exc)})") from None
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            found = "nothing" if weight_map is None else type(weight_map).__name__
            raise CheckpointError(
                f"{index_path}: 'weight_map': expected an object (tensor name -> file name), found {found}"
            )
        for name, file in weight_map.items():
            if not isinstance(file, str) or not file or file != os.path.basename(file) or file in (".", ".."):
                raise CheckpointError(
                    f"{index_path}: 'weight_map.{name}': expected the name of a file in {path}, found {file!r}"
                )
            if not (path / file).is_file():
                raise CheckpointError(f"{index_path}: tensor {name} is in {file}, which is missing")
            files[name] = path / file
    else:
        from safetensors import safe_open

        for file in sorted(path.glob("*.safetensors")):
            try:
                with safe_open(str(file), framework="pt") as f:
                    for name in f.keys():
                        files[name] = file
            except Exception as exc:  # safetensors raises its own error type
                raise CheckpointError(f"{file}: unreadable safetensors file ({_short(exc)})") from None
    return CheckpointFiles(path, kind, config, files)


def _short(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# ----------------------------------------------------------------------------- reading tensors
class CheckpointReader:
    """Validates a checkpoint against its config and yields canonical tensors one at a time."""

    def __init__(self, files: CheckpointFiles):
        self.files = files
        self.config = files.config
        self.experts = files.experts
        self._open: dict[Path, object] = {}
        self.validate()

    def _handle(self, file: Path):
        from safetensors import safe_open

        if file not in self._open:
            try:
                self._open[file] = safe_open(str(file), framework="pt")
            except Exception as exc:
                raise CheckpointError(f"{file}: unreadable safetensors file ({_short(exc)})") from None
        return self._open[file]

    def _meta(self, name: str) -> tuple[tuple[int, ...], str]:
        file = self.files.tensor_files[name]
        handle = self._handle(file)
        try:
            sl = handle.get_slice(name)
        except Exception as exc:  # safetensors raises its own error type
            if name not in handle.keys():
                raise CheckpointError(
                    f"{self.files.folder / HF_INDEX}: tensor {name} is mapped to {file.name}, which does not hold it"
                ) from None
            raise CheckpointError(f"{file}: cannot read tensor {name} ({_short(exc)})") from None
        return tuple(sl.get_shape()), sl.get_dtype()

    def validate(self) -> None:
        expected = (
            canonical_shapes(self.config, self.experts)
            if self.files.layout == "original"
            else hf_shapes(self.config, self.experts)
        )
        present = set(self.files.tensor_files)
        where = self.files.folder
        for name in expected:
            if name not in present:
                raise CheckpointError(f"{where}: missing tensor {name} ({self.files.layout} layout)")
        extra = sorted(present - set(expected))
        if extra:
            raise CheckpointError(
                f"{where}: unexpected tensor {extra[0]} ({self.files.layout} layout, "
                f"config has {self.config.num_hidden_layers} layers, {self.config.num_experts} experts)"
            )
        for name, (shape, kind) in expected.items():
            found, dtype = self._meta(name)
            if found != shape:
                raise CheckpointError(
                    f"{where}: tensor {name}: expected shape {list(shape)}, found {list(found)}"
                    + (
                        " (dense experts are stored [experts, in, out], as transformers saves them)"
                        if name.endswith(("gate_up_proj", "down_proj", "mlp1_weight.weight", "mlp2_weight.weight"))
                        else ""
                    )
                )
            if kind == "uint8" and dtype != "U8":
                raise CheckpointError(f"{where}: tensor {name}: expected dtype U8 (MXFP4), found {dtype}")
            if kind == "float" and dtype not in ("BF16", "F16", "F32"):
                raise CheckpointError(f"{where}: tensor {name}: expected a float dtype, found {dtype}")

    def get(self, canonical: str) -> torch.Tensor:
        """Read one canonical tensor (memory-mapped; floats keep their stored dtype)."""
        names = (canonical,) if self.files.layout == "original" else hf_names(canonical)
        parts = []
        for name in names:
            file = self.files.tensor_files[name]
            try:
                parts.append(self._handle(file).get_tensor(name))
            except Exception as exc:
                raise CheckpointError(f"{file}: cannot read tensor {name} ({_short(exc)})") from None
        if len(parts) == 1:
            return parts[0]
        joined = torch.cat(parts, dim=0)
        for part in parts:  # the join is a copy: the file's pages it was read from need not stay resident
            release_mapped_pages(part)
        return joined

    def get_slices(self, canonical: str, ranges: list[tuple[int, int]], dim: int = 0) -> torch.Tensor:
        """Read only the ``[lo, hi)`` ranges of one canonical tensor along ``dim``, joined in order (a
        rank's share of a sharded model). Uses safetensors' ``get_slice``: nothing else of the tensor is
        read, and MXFP4 blocks and scales are sliced as stored, without unpacking. In the HF layout the
        rows of ``qkv`` map onto ``q_proj``, ``k_proj`` and ``v_proj``."""
        names = (canonical,) if self.files.layout == "original" else hf_names(canonical)
        if dim != 0 and len(names) > 1:
            raise CheckpointError(f"tensor {canonical}: only rows (dim 0) can be sliced across {', '.join(names)}")
        parts, offset = [], 0
        for name in names:
            file = self.files.tensor_files[name]
            try:
                sl = self._handle(file).get_slice(name)
            except Exception as exc:
                raise CheckpointError(f"{file}: cannot read tensor {name} ({_short(exc)})") from None
            parts.append((name, file, sl, offset))
            offset += sl.get_shape()[0]
        pieces = []
        for lo, hi in ranges:
            for name, file, sl, start in parts:
                size = sl.get_shape()[dim] if dim else sl.get_shape()[0]
                a, b = (max(lo - start, 0), min(hi - start, size)) if dim == 0 else (lo, hi)
                if a >= b:
                    continue
                try:
                    pieces.append(sl[(slice(None),) * dim + (slice(a, b),)])
                except Exception as exc:
                    raise CheckpointError(
                        f"{file}: cannot read rows {a}:{b} of tensor {name} ({_short(exc)})"
                    ) from None
        if not pieces:
            raise CheckpointError(f"tensor {canonical}: the ranges {ranges} select nothing")
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=dim)

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in canonical_shapes(self.config, self.experts):
            yield name, self.get(name)


# ----------------------------------------------------------------------------- page cache
def read_ahead(files, available: int | None = None) -> threading.Thread | None:
    """Ask the kernel to read ``files`` into the page cache in the background (POSIX_FADV_WILLNEED), so the
    first request on a memory-mapped CPU model does not wait for the disk expert by expert. Skipped when the
    files would not fit in the memory available (they would only evict each other). Returns the thread."""
    if not hasattr(os, "posix_fadvise"):
        return None
    paths = [Path(f) for f in files]
    try:
        total = sum(p.stat().st_size for p in paths)
    except OSError:
        return None
    if available is None:
        available = mem_available()
    if available is not None and total > available:
        return None

    def run() -> None:
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)

    thread = threading.Thread(target=run, name="gptoss-read-ahead", daemon=True)
    thread.start()
    return thread


def mem_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def release_mapped_pages(t: torch.Tensor) -> bool:
    """Drop from this process the pages that lie wholly under ``t`` when ``t`` is a view of a file mapping (a
    memory-mapped safetensors tensor that was copied and is no longer used), so that they stop counting in
    its resident memory; the page cache keeps them, and a later read would fault them back from the file.
    Pages shared with a neighbouring tensor, and memory the allocator owns, are never touched. Returns whether
    pages were dropped."""
    if not sys.platform.startswith("linux") or not t.is_contiguous() or not t.numel():
        return False
    ptr, nbytes = t.data_ptr(), t.numel() * t.element_size()
    mapped = False
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                if len(fields) < 6 or not fields[5].strip().startswith("/"):
                    continue
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                if lo <= ptr and ptr + nbytes <= hi:
                    mapped = True
                    break
    except (OSError, ValueError):
        return False
    page = mmap.PAGESIZE
    start, end = (ptr + page - 1) // page * page, (ptr + nbytes) // page * page
    libc = _libc()
    if not mapped or end <= start or libc is None:
        return False
    return libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), 4) == 0  # MADV_DONTNEED


@functools.lru_cache(maxsize=1)
def _libc():
    path = ctypes.util.find_library("c")
    return ctypes.CDLL(path) if path else None
