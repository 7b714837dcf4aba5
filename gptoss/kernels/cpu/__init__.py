"""Native CPU kernels (C++ with SIMD, OpenMP threads), each beside the plain-torch path it must match.

=============================  ==========================================  ===================================
function                       what                                        reference it must match
=============================  ==========================================  ===================================
``mxfp4_dequantize``           E2M1 + E8M0 decode (bit-exact)              ``gptoss.model.mxfp4.dequantize``
``linear``                     ``x @ W.T + b``, W float32, bf16 or MXFP4   ``torch.nn.functional.linear``
                               (decoded a few rows at a time, in cache)
``moe_experts``                tokens grouped by expert; MXFP4 products,   ``gptoss.model.moe.experts_reference``
                               fused bias + SwiGLU, weighted combine
=============================  ==========================================  ===================================

The library is compiled on first use (see :mod:`gptoss.kernels.cpu.builder`) for every instruction set this
CPU runs — AVX-512 (with or without its bf16 dot product), AVX2+FMA, NEON, a portable build — and each product of
a real model's size runs in the variant measured fastest for it on this CPU (:mod:`gptoss.kernels.cpu.chooser`:
the instruction set, a prefetch distance, or torch's GEMM, timed at first use and kept beside the libraries).
``GPTOSS_CPU_ISA=portable|avx2|avx512|avx512bf16|neon`` forces one and skips the choice (tests force each in turn).
``GPTOSS_NUM_THREADS`` sets the threads (default: the physical cores); the same count is given to torch, whose
OpenMP pool ours is (one libgomp), so the two never oversubscribe the cores; without either, ours follow torch's
thread count, capped at the physical cores.
Where no compiler works, :func:`available` is False, the model runs its reference path, and one warning says why.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from gptoss.kernels.cpu import chooser as choice
from gptoss.kernels.cpu.builder import BuildError, build, cpu_flags, runnable_isas
from gptoss.kernels.cpu.chooser import Variant, token_class

_lock = threading.Lock()
_libs: dict[str, ctypes.CDLL] = {}
_failed: dict[str, str] = {}
_warned = False
_threads: int | None = None

_F = ctypes.c_float
_I64 = ctypes.c_int64
_P = ctypes.c_void_p
_INT = ctypes.c_int


def _forced_isa() -> str:
    return os.environ.get("GPTOSS_CPU_ISA", "").strip().lower()


def chosen_isa() -> str:
    """The variant the model uses: ``GPTOSS_CPU_ISA`` when set (it must be one this CPU runs), else the best
    one that has not failed to build (a compiler too old for one instruction set falls back to the next)."""
    runnable = runnable_isas()
    forced = _forced_isa()
    if forced:
        if forced not in runnable:
            raise ValueError(f"GPTOSS_CPU_ISA={forced!r}: this CPU runs {', '.join(runnable)}")
        return forced
    return next((isa for isa in runnable if isa not in _failed), runnable[-1])


def library(isa: str | None = None) -> ctypes.CDLL:
    """The loaded library for ``isa`` (default :func:`chosen_isa`, falling back past variants that fail to
    build); builds it on first use. Raises BuildError."""
    if isa is None and not _forced_isa():
        while True:
            candidate = chosen_isa()
            try:
                return library(candidate)
            except BuildError:
                if candidate == runnable_isas()[-1]:
                    raise
    isa = isa or chosen_isa()
    with _lock:
        if isa in _libs:
            return _libs[isa]
        if isa in _failed:
            raise BuildError(_failed[isa])
        try:
            lib = ctypes.CDLL(str(build(isa)))
        except (BuildError, OSError) as e:
            _failed[isa] = str(e)
            raise BuildError(str(e)) from e
        lib.gptoss_isa.restype = ctypes.c_char_p
        lib.gptoss_max_threads.restype = _INT
        lib.gptoss_mxfp4_dequantize.argtypes = [_P, _P, _I64, _I64, _P, _INT]
        lib.gptoss_linear.argtypes = [_P, _I64, _I64, _P, _P, _INT, _I64, _P, _INT, _P, _INT, _INT]
        lib.gptoss_moe_experts.argtypes = [
            _P,
            _I64,
            _I64,
            _I64,
            _P,
            _P,
            _I64,
            _I64,
            _P,
            _P,
            _P,
            _P,
            _P,
            _P,
            _INT,
            _F,
            _F,
            _P,
            _INT,
            _INT,
        ]
        lib.gptoss_set_tuning.argtypes = [_I64, _I64]
        lib.gptoss_set_tuning.restype = _I64
        lib.gptoss_mxfp4_to_bf16.argtypes = [_P, _P, _I64, _I64, _P, _INT]
        lib.gptoss_paged_attention.argtypes = [
            _P,
            _P,
            _P,
            _INT,
            _I64,
            _P,
            _I64,
            _P,
            _P,
            _I64,
            _I64,
            _I64,
            _I64,
            _P,
            _F,
            _I64,
            _P,
            _I64,
            _INT,
        ]
        _libs[isa] = lib
        return lib


def available() -> bool:
    """Whether the native kernels load (compiling them if needed). Warns once, on stderr, when they do not."""
    global _warned
    try:
        library()
        return True
    except BuildError as e:
        if not _warned:
            _warned = True
            print(
                f"gptoss: the native CPU kernels are unavailable, so the model runs its plain-torch reference "
                f"path, which is far slower: {e}",
                file=sys.stderr,
            )
        return False


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads counted once)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:
        allowed = None
    cores = set()
    try:
        cpu = None
        with open("/proc/cpuinfo") as f:
            phys = core = None
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    cpu = int(value)
                elif key == "physical id":
                    phys = value
                elif key == "core id":
                    core = value
                    if allowed is None or cpu in allowed:
                        cores.add((phys, core))
    except (OSError, ValueError):
        pass
    n = len(cores) or (len(allowed) if allowed else os.cpu_count() or 1)
    if allowed:
        n = min(n, len(allowed))
    return max(1, n)


def num_threads() -> int:
    """Threads for the native kernels: :func:`set_num_threads` (``--threads``), else ``GPTOSS_NUM_THREADS``, else
    torch's intra-op threads capped at the physical cores (so a program that gave torch one thread gets one)."""
    global _threads
    if _threads is None:
        env = os.environ.get("GPTOSS_NUM_THREADS", "").strip()
        if env:
            try:
                n = int(env)
            except ValueError:
                n = 0
            if n < 1:
                raise ValueError(f"GPTOSS_NUM_THREADS={env!r}: expected a positive integer")
            set_num_threads(n)
        else:
            return max(1, min(_physical_cores(), torch.get_num_threads()))
    return _threads


@functools.lru_cache(maxsize=1)
def _physical_cores() -> int:
    return physical_cores()


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in our kernels and in torch's (one OpenMP pool: no oversubscription)."""
    global _threads
    if n < 1:
        raise ValueError(f"threads: expected a positive integer, got {n}")
    _threads = int(n)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


# ----------------------------------------------------------------------------- ops
def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _bias_kind(bias: torch.Tensor | None) -> tuple[torch.Tensor | None, int]:
    if bias is None:
        return None, 0
    if bias.dtype == torch.bfloat16:
        return bias.contiguous(), 2
    return bias.float().contiguous(), 1


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32).contiguous()


def _check_cpu(what: str, *tensors: torch.Tensor | None) -> None:
    for t in tensors:
        if t is not None and t.device.type != "cpu":
            raise ValueError(f"{what}: the native CPU kernels need CPU tensors, got one on {t.device}")


def mxfp4_dequantize(
    blocks: torch.Tensor, scales: torch.Tensor, isa: str | None = None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``blocks [rows, G, 16]``, ``scales [rows, G]`` uint8 -> float32 ``[rows, G*32]`` (the kernels' own decode),
    threaded; into ``out`` when given."""
    _check_cpu("mxfp4_dequantize", blocks, scales)
    if (
        blocks.dtype != torch.uint8
        or scales.dtype != torch.uint8
        or blocks.dim() != 3
        or blocks.shape[:2] != scales.shape
    ):
        raise ValueError(
            f"mxfp4_dequantize: expected uint8 blocks [rows, G, 16] and scales [rows, G], got "
            f"{blocks.dtype} {tuple(blocks.shape)} and {scales.dtype} {tuple(scales.shape)}"
        )
    rows, groups = scales.shape
    blocks, scales = blocks.contiguous(), scales.contiguous()
    if out is None:
        out = torch.empty(rows, groups * 32, dtype=torch.float32)
    if rows:
        library(isa).gptoss_mxfp4_dequantize(_ptr(blocks), _ptr(scales), rows, groups * 32, _ptr(out), num_threads())
    return out


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    scales: torch.Tensor | None = None,
    isa: str | None = None,
    bf16_inputs: bool = False,
) -> torch.Tensor:
    """``x [..., K] @ weight.T + bias`` in float32 -> float32 ``[..., M]``. ``weight [M, K]`` float32 or
    bfloat16, or MXFP4 blocks ``[M, K/32, 16]`` uint8 with ``scales [M, K/32]``. ``bf16_inputs``: ``x`` may be
    rounded to bfloat16 (a bf16 model's activations are), so a CPU with bf16 dot products (``avx512bf16``) uses
    them for bf16 and MXFP4 weights; products still sum in float32."""
    _check_cpu("linear", x, weight, bias, scales)
    if weight.dtype == torch.uint8:
        if scales is None or weight.dim() != 3 or weight.shape[:2] != scales.shape:
            raise ValueError("linear: MXFP4 weight needs blocks [M, K/32, 16] and scales [M, K/32]")
        m, k, kind = weight.shape[0], weight.shape[1] * 32, 2
    elif weight.dtype in (torch.bfloat16, torch.float32):
        m, k = weight.shape
        kind = 1 if weight.dtype == torch.bfloat16 else 0
    else:
        raise ValueError(f"linear: weight dtype {weight.dtype} is not float32, bfloat16 or MXFP4 (uint8)")
    if x.shape[-1] != k:
        raise ValueError(f"linear: input has {x.shape[-1]} features, the weight expects {k}")
    lead = x.shape[:-1]
    x2 = _f32(x.reshape(-1, k))
    weight = weight.contiguous()
    scales = scales.contiguous() if scales is not None else None
    b, bkind = _bias_kind(bias)
    y = torch.empty(x2.shape[0], m, dtype=torch.float32)
    if x2.shape[0]:
        library(isa).gptoss_linear(
            _ptr(x2),
            x2.shape[0],
            k,
            _ptr(weight),
            _ptr(scales),
            kind,
            m,
            _ptr(b),
            bkind,
            _ptr(y),
            num_threads(),
            int(bf16_inputs),
        )
    return y.reshape(*lead, m)


def moe_experts(
    t: torch.Tensor,
    weights: torch.Tensor,
    indices: torch.Tensor,
    mlp1_weight,
    mlp1_bias: torch.Tensor,
    mlp2_weight,
    mlp2_bias: torch.Tensor,
    alpha: float = 1.702,
    limit: float = 7.0,
    isa: str | None = None,
    bf16_inputs: bool = False,
) -> torch.Tensor:
    """The experts of each token, weighted and summed: ``t [N, hidden]``, routing ``weights, indices [N, k]``,
    ``mlp*_weight`` :class:`~gptoss.model.mxfp4.MXFP4Weight`. Returns float32 ``[N, hidden]`` (no residual).
    ``bf16_inputs``: ``t`` and the SwiGLU activations may be rounded to bfloat16, as a bf16 model's reference
    rounds them (see :func:`linear`). Without ``isa``, the variant is the one :mod:`.chooser` measured fastest
    for this token class and these widths."""
    args = (mlp1_weight, mlp1_bias, mlp2_weight, mlp2_bias, alpha, limit)
    if isa is not None or _forced_isa():
        return _moe_experts(t, weights, indices, *args, isa=isa, bf16_inputs=bf16_inputs)
    n, h = t.shape
    k, i = indices.shape[1], mlp2_weight.blocks.shape[2] * 32
    key = f"experts/{token_class(n)}/{h}x{i}/t{num_threads()}"

    def call(v: Variant, tt=t, tw=weights, ti=indices) -> torch.Tensor:
        if v.isa == TORCH_F32:  # experts with many tokens to torch's float32 GEMM, the others in our kernel
            return _moe_experts(tt, tw, ti, *args, isa=None, bf16_inputs=bf16_inputs, gemm_f32=True)
        _apply(v)
        return _moe_experts(tt, tw, ti, *args, isa=v.isa, bf16_inputs=bf16_inputs)

    trial = None
    if n > TRIAL_TOKENS:  # prefill: 64 tokens, each to the same k experts (many tokens an expert, as in a prompt)
        tt = t[:TRIAL_TOKENS]
        ti = torch.arange(k).repeat(TRIAL_TOKENS, 1) % mlp1_weight.blocks.shape[0]
        tw = weights[:TRIAL_TOKENS]

        def trial(v: Variant) -> torch.Tensor:
            return call(v, tt, tw, ti)

    expert_bytes = (
        mlp1_weight.blocks[0].numel()
        + mlp1_weight.scales[0].numel()
        + mlp2_weight.blocks[0].numel()
        + mlp2_weight.scales[0].numel()
    )
    return choice.chooser().run(key, expert_bytes, _candidates("experts", n), call, trial)


def _moe_experts(
    t, weights, indices, mlp1_weight, mlp1_bias, mlp2_weight, mlp2_bias, alpha, limit, isa, bf16_inputs, gemm_f32=False
) -> torch.Tensor:
    b1, s1, b2, s2 = mlp1_weight.blocks, mlp1_weight.scales, mlp2_weight.blocks, mlp2_weight.scales
    _check_cpu("moe_experts", t, weights, indices, b1, s1, b2, s2, mlp1_bias, mlp2_bias)
    n, h = t.shape
    e, two_i = b1.shape[0], b1.shape[1]
    i = two_i // 2
    if b1.shape[1:] != (two_i, h // 32, 16) or b2.shape != (e, h, i // 32, 16):
        raise ValueError(f"moe_experts: expert shapes {tuple(b1.shape)} / {tuple(b2.shape)} do not fit hidden {h}")
    if mlp1_bias.dtype != mlp2_bias.dtype:
        mlp2_bias = mlp2_bias.to(mlp1_bias.dtype)
    for name, tensor in (("mlp1 blocks", b1), ("mlp1 scales", s1), ("mlp2 blocks", b2), ("mlp2 scales", s2)):
        if not tensor.is_contiguous():  # never copy expert weights (they are memory-mapped)
            raise ValueError(f"moe_experts: {name} must be contiguous")
    bias1, bkind = _bias_kind(mlp1_bias)
    bias2, _ = _bias_kind(mlp2_bias)
    t32 = _f32(t)
    w32 = _f32(weights)
    idx = indices.to(torch.int64).contiguous()
    out = torch.empty(n, h, dtype=torch.float32)
    big: list[int] = []
    gemm_dtype, least = None, 0
    if bf16_inputs and cpu_has_amx():
        gemm_dtype, least = torch.bfloat16, GEMM_MIN_TOKENS
    elif gemm_f32:
        gemm_dtype, least = torch.float32, GEMM_F32_MIN_TOKENS
    if gemm_dtype is not None and idx.numel() >= least:
        counts = torch.bincount(idx.view(-1).clamp(0, e), minlength=e + 1)[:e]
        big = (counts >= least).nonzero().view(-1).tolist()
        if big:  # those experts' pairs go to the GEMM below; the kernel skips an expert index of -1
            idx = idx.masked_fill(torch.isin(idx, torch.tensor(big)), -1)
    if n:
        library(isa).gptoss_moe_experts(
            _ptr(t32),
            n,
            h,
            i,
            _ptr(idx),
            _ptr(w32),
            idx.shape[1],
            e,
            _ptr(b1),
            _ptr(s1),
            _ptr(bias1),
            _ptr(b2),
            _ptr(s2),
            _ptr(bias2),
            bkind,
            float(alpha),
            float(limit),
            _ptr(out),
            num_threads(),
            int(bf16_inputs),
        )
    if big:
        experts = (mlp1_weight, mlp1_bias, mlp2_weight, mlp2_bias, alpha, limit)
        _experts_by_gemm(t, w32, indices.to(torch.int64), big, *experts, out, isa, gemm_dtype)
    return out


# Tokens an expert must have (on a CPU with AMX, in a bf16 model) for its products to go to torch's bf16 GEMM
# (oneDNN, on AMX tiles: ~4-6x our VDPBF16PS kernel from 16 tokens on) instead of our kernel. Its MXFP4 rows are
# decoded GEMM_ROWS at a time into a bf16 slice that stays in cache: never a whole expert.
GEMM_MIN_TOKENS = 16
GEMM_ROWS = 512
# Tokens an expert must have for the TORCH_F32 variant to send it to torch's float32 GEMM (decoded float32 slices):
# on a Zen 3 (AVX2, 2 threads) torch's SGEMM ran the 2,880-wide products at 66-85 GFLOP/s for 37 tokens, 101-115 for
# 64 and 132-150 for 300, our kernel at 69-75 for all three.
GEMM_F32_MIN_TOKENS = 48
# The variant of torch's float32 GEMM over weights widened (bf16) or decoded (MXFP4) a slice at a time.
TORCH_F32 = "torch32"


@functools.lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    return "amx_bf16" in cpu_flags()


def mxfp4_to_bf16(
    blocks: torch.Tensor, scales: torch.Tensor, out: torch.Tensor | None = None, isa: str | None = None
) -> torch.Tensor:
    """MXFP4 rows ``blocks [rows, G, 16]``, ``scales [rows, G]`` -> bf16 ``[rows, G*32]`` (exact), threaded."""
    rows, groups = scales.shape
    if out is None:
        out = torch.empty(rows, groups * 32, dtype=torch.bfloat16)
    if rows:
        library(isa).gptoss_mxfp4_to_bf16(_ptr(blocks), _ptr(scales), rows, groups * 32, _ptr(out), num_threads())
    return out


def _experts_by_gemm(t, weights, indices, experts, w1, b1, w2, b2, alpha, limit, out, isa, dtype) -> None:
    """Add to ``out`` what ``experts`` (each with many tokens) contribute, through torch's GEMM in ``dtype``:
    h = t W1^T and y = a W2^T in bf16 (as the bf16 reference computes them) or float32 (as our float32 kernels
    do), biases, SwiGLU and the weighted sum in float32."""
    from gptoss.model.moe import swiglu

    k = indices.shape[1]
    tb = t.to(dtype)
    two_i, h = w1.blocks.shape[1], w2.blocks.shape[1]
    buf = torch.empty(GEMM_ROWS * max(h, two_i // 2), dtype=dtype)
    decode = mxfp4_to_bf16 if dtype == torch.bfloat16 else mxfp4_dequantize
    flat, wflat = indices.view(-1), weights.reshape(-1)

    def product(x, weight, e, rows):
        cols = weight.blocks.shape[2] * 32
        parts = []
        for r0 in range(0, rows, GEMM_ROWS):
            r1 = min(rows, r0 + GEMM_ROWS)
            slice_ = decode(
                weight.blocks[e, r0:r1],
                weight.scales[e, r0:r1],
                out=buf[: (r1 - r0) * cols].view(r1 - r0, cols),
                isa=isa,
            )
            parts.append(torch.mm(x, slice_.t()))
        return torch.cat(parts, dim=1)

    for e in experts:
        pairs = (flat == e).nonzero().view(-1)
        tokens = pairs // k
        hh = product(tb[tokens], w1, e, two_i).float() + b1[e].float()
        act = swiglu(hh, alpha, limit).to(dtype)
        y = product(act, w2, e, h).float() + b2[e].float()
        out.index_add_(0, tokens, y * wflat[pairs, None])


def paged_attention(
    q: torch.Tensor,
    k_pages: torch.Tensor,
    v_pages: torch.Tensor,
    block_table: torch.Tensor,
    seq: torch.Tensor,
    pos: torch.Tensor,
    sinks: torch.Tensor,
    sm_scale: float,
    window: int,
    isa: str | None = None,
    tile: int | None = None,
) -> torch.Tensor:
    """Attention with sinks of ``N`` new tokens over a paged cache that already holds their keys: ``q [N, HQ, D]``
    (after RoPE), pages ``[blocks, block_size, HK, D]`` (float32 or bf16), ``block_table [B, width]``, per token
    its sequence's row ``seq`` and its position ``pos`` (int64 ``[N]``), a sequence's tokens side by side. Float32
    ``[N, HQ * D]`` out, as :func:`gptoss.model.attention.paged_attention_reference` computes it.

    A token alone in its sequence (decode) reads its keys on its own; the tokens of a sequence with several
    (a prefill chunk, the new turn after a cached prefix) attend in tiles of ``tile`` queries that read each key
    once. ``tile=0``: every token on its own. Without ``tile``, the tile size (or none) is the one :mod:`.chooser`
    measured fastest for this shape on this CPU."""
    _check_cpu("paged_attention", q, k_pages, v_pages, block_table, seq, pos, sinks)
    n, hq, d = q.shape
    blocks, bs, hk, dk = k_pages.shape
    if dk != d or v_pages.shape != k_pages.shape or hq % hk:
        raise ValueError(f"paged_attention: q {tuple(q.shape)}, pages {tuple(k_pages.shape)} do not fit")
    if k_pages.dtype not in (torch.float32, torch.bfloat16) or v_pages.dtype != k_pages.dtype:
        raise ValueError(f"paged_attention: page dtype {k_pages.dtype} is not float32 or bfloat16")
    if not (k_pages.is_contiguous() and v_pages.is_contiguous()):
        raise ValueError("paged_attention: pages must be contiguous")
    table = block_table.to(torch.int64).contiguous()
    seq64, pos64 = seq.to(torch.int64).contiguous(), pos.to(torch.int64).contiguous()
    if n and table.numel() and (int(table.max()) >= blocks or int(table.min()) < 0):
        raise ValueError(f"paged_attention: a block table entry lies outside the {blocks} pages")
    if n and (
        int(seq64.min()) < 0
        or int(seq64.max()) >= table.shape[0]
        or int(pos64.min()) < 0
        or int(pos64.max()) >= table.shape[1] * bs
    ):
        raise ValueError("paged_attention: a token's sequence or position lies outside the block table")
    args = (_f32(q), k_pages, v_pages, table, seq64, pos64, _f32(sinks), float(sm_scale), int(window))
    if tile is not None:
        return _paged_attention(*args, isa=isa, tile=tile)
    counts = torch.unique_consecutive(seq64, return_counts=True)[1] if n > 1 else torch.ones(n, dtype=torch.int64)
    longest = int(counts.max()) if n else 0
    if longest <= 1:  # decode: nothing to tile
        return _paged_attention(*args, isa=isa, tile=0)
    if isa is not None or _forced_isa():
        return _paged_attention(*args, isa=isa, tile=ATTENTION_TILES[0])
    # the longest sequence's last tokens (the most keys) are the trial of a long chunk
    end = int(counts.cumsum(0)[int(counts.argmax())])
    trial_tokens = torch.arange(max(end - longest, end - ATTENTION_TRIAL_TOKENS), end)
    keys = min(int(pos64[end - 1]) + 1, window) if window else int(pos64[end - 1]) + 1
    kv_class = 1 << max(10, (keys - 1).bit_length())
    key = (
        f"attention/{token_class(longest)}/{hq}x{hk}x{d}/{str(k_pages.dtype).removeprefix('torch.')}/"
        f"{'banded' if window else 'dense'}/kv{kv_class}/t{num_threads()}"
    )
    isa = chosen_isa()
    cands = [Variant(isa, tile=t) for t in ATTENTION_TILES] + [Variant(isa)]

    tq, tseq, tpos = args[0][trial_tokens], seq64[trial_tokens], pos64[trial_tokens]

    def trial(v: Variant) -> torch.Tensor:
        return _paged_attention(tq, k_pages, v_pages, table, tseq, tpos, *args[6:], isa=v.isa, tile=v.tile)

    kv_bytes = 2 * keys * hk * d * k_pages.element_size()
    return choice.chooser().run(
        key,
        kv_bytes,
        cands,
        lambda v: _paged_attention(*args, isa=v.isa, tile=v.tile),
        trial if n > ATTENTION_TRIAL_TOKENS else None,
    )


# Queries a tile of the tiled attention, the first the default (a shape too small to time, a forced variant);
# the chooser times these and the per-query kernel on a trial of the chunk's last ATTENTION_TRIAL_TOKENS tokens.
ATTENTION_TILES = (32, 16, 64)
ATTENTION_TRIAL_TOKENS = 128


def _paged_attention(q32, k_pages, v_pages, table, seq64, pos64, s32, sm_scale, window, isa, tile) -> torch.Tensor:
    n, hq, d = q32.shape
    out = torch.empty(n, hq * d, dtype=torch.float32)
    if n:
        kind = 2 if k_pages.dtype == torch.bfloat16 else 1
        library(isa).gptoss_paged_attention(
            _ptr(q32),
            _ptr(k_pages),
            _ptr(v_pages),
            kind,
            k_pages.shape[1],
            _ptr(table),
            table.shape[1],
            _ptr(seq64),
            _ptr(pos64),
            n,
            hq,
            k_pages.shape[2],
            d,
            _ptr(s32),
            sm_scale,
            window,
            _ptr(out),
            int(tile),
            num_threads(),
        )
    return out


def rounds_to_bf16(isa: str | None = None) -> bool:
    """Whether ``bf16_inputs=True`` products round their inputs to bf16 and use bf16 dot products on this
    variant (``avx512bf16``); the other variants ignore the flag and stay in float32."""
    return (isa or chosen_isa()) == "avx512bf16"


@functools.lru_cache(maxsize=None)
def isa_name(isa: str | None = None) -> str:
    return library(isa).gptoss_isa().decode()


# Tokens from which a bf16 product goes to torch (oneDNN) instead of our kernel, on CPUs whose bf16 units
# (AMX, AVX512-BF16) oneDNN uses: measured there at ~114 GMAC/s a core for 64 tokens against our ~30.
TORCH_BF16_MIN_TOKENS = 16


@functools.lru_cache(maxsize=1)
def cpu_has_bf16_units() -> bool:
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})


def dense(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A model's ``Linear`` on ``x``, float32 out: bf16 weights through :func:`linear` (read as they are, no
    float32 copy) — or, for many tokens on a CPU with bf16 units, through torch's bf16 GEMM — in the variant
    :mod:`.chooser` measured fastest for this shape; float32 weights through torch (its BLAS is already at the
    memory bandwidth)."""
    if type(module) is not torch.nn.Linear:  # a sharded layer (gptoss.model.parallel) joins its parts itself
        return module(x).float()
    w = module.weight
    if w.dtype != torch.bfloat16:
        return torch.nn.functional.linear(x.float(), w.float(), None if module.bias is None else module.bias.float())
    bias, bf16_inputs = module.bias, x.dtype == torch.bfloat16
    n = x.numel() // x.shape[-1] if x.shape[-1] else 0
    m, k = w.shape

    def run(v: Variant, xx: torch.Tensor, ww: torch.Tensor, bb: torch.Tensor | None) -> torch.Tensor:
        if v.isa == "torch":
            return torch.nn.functional.linear(xx.to(torch.bfloat16), ww, bb).float()
        if v.isa == TORCH_F32:
            return _linear_by_f32_gemm(xx, ww, bb)
        _apply(v)
        return linear(xx, ww, bb, isa=v.isa, bf16_inputs=bf16_inputs)

    cands = _candidates("dense", n)
    if _forced_isa():
        return run(cands[0], x, w, bias)
    kind = "unembedding" if m >= UNEMBEDDING_ROWS else "dense"
    key = f"{kind}/{token_class(n)}/{m}x{k}/t{num_threads()}"
    trial = None
    rows = max(1, TRIAL_BYTES // (2 * k))
    if n > TRIAL_TOKENS or m > rows:  # a slice: the first rows (still far larger than any L3), 64 tokens
        tx = x.reshape(-1, k)[:TRIAL_TOKENS]
        tw, tb = w[:rows], None if bias is None else bias[:rows]

        def trial(v):
            return run(v, tx, tw, tb)

    return choice.chooser().run(key, 2 * m * k, cands, lambda v: run(v, x, w, bias), trial)


def _linear_by_f32_gemm(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ w^T + bias`` in float32 through torch's SGEMM, the bf16 weight widened GEMM_ROWS rows at a time
    (a slice that stays in cache; never a float32 copy of the whole weight)."""
    m, k = w.shape
    x32 = x.reshape(-1, k).float()
    buf = torch.empty(min(m, GEMM_ROWS) * k, dtype=torch.float32)
    out = torch.empty(x32.shape[0], m, dtype=torch.float32)
    for r0 in range(0, m, GEMM_ROWS):
        r1 = min(m, r0 + GEMM_ROWS)
        slice_ = buf[: (r1 - r0) * k].view(r1 - r0, k)
        slice_.copy_(w[r0:r1])
        out[:, r0:r1] = torch.mm(x32, slice_.t())
    if bias is not None:
        out += bias.float()
    return out.reshape(*x.shape[:-1], m)


# ----------------------------------------------------------------------------- the choice of variant
UNEMBEDDING_ROWS = 65536  # a product this tall is the unembedding (vocabulary rows)
TRIAL_TOKENS = 64  # the trial of a prefill product: its first 64 tokens
TRIAL_BYTES = 96 << 20  # the trial of a tall product: its first rows, this many bytes (> any L3 here)
DEFAULT_PREFETCH = 32768  # bytes (the library's own default, PF_BYTES)
PREFETCH_CANDIDATES = (8192, 131072)  # besides the default, tried for the one-token products
_tuning: dict[str, int] = {}


def _apply(v: Variant) -> None:
    """Set ``v``'s prefetch distance in its library (each library keeps its own; only speed depends on it)."""
    pf = v.pf or DEFAULT_PREFETCH
    if _tuning.get(v.isa) != pf:
        library(v.isa).gptoss_set_tuning(pf, 0)
        _tuning[v.isa] = pf


@functools.lru_cache(maxsize=1)
def _loadable_isas() -> tuple[str, ...]:
    """The variants this CPU runs whose libraries build and load, best by flags first; built side by side."""
    isas = runnable_isas()
    with ThreadPoolExecutor(max_workers=len(isas)) as pool:  # the compiler runs in subprocesses: in parallel
        list(pool.map(lambda isa: _try(build, isa), isas))
    ok = tuple(isa for isa in isas if _try(library, isa))
    return ok or (isas[-1],)


def _try(fn, isa) -> bool:
    try:
        fn(isa)
        return True
    except BuildError:
        return False


def _candidates(kind: str, n: int) -> list[Variant]:
    """The variants timed for a product of ``kind`` (``dense`` or ``experts``) on ``n`` tokens; the first is
    what runs without a choice (forced, or a product too small to time)."""
    return _candidates_for(kind, min(n, TORCH_BF16_MIN_TOKENS + 1), _forced_isa(), tuple(_failed))


@functools.lru_cache(maxsize=256)
def _candidates_for(kind: str, n: int, forced: str, failed: tuple[str, ...]) -> list[Variant]:
    default = chosen_isa()
    torch_first = kind == "dense" and n >= TORCH_BF16_MIN_TOKENS and cpu_has_bf16_units()
    if _forced_isa():  # that instruction set for our kernels; many tokens still go to torch's GEMM, as before
        return [Variant("torch")] if torch_first else [Variant(default)]
    isas = [i for i in _loadable_isas() if i != "portable"] or [default]
    if default not in isas:
        default = isas[0]
    out = [Variant(default)] + [Variant(i) for i in isas if i != default]
    if n <= 1:
        out += [Variant(default, pf) for pf in PREFETCH_CANDIDATES]
    if kind == "dense" and n > 4 and cpu_has_bf16_units():  # torch's GEMM (oneDNN) uses the bf16 units
        out = [Variant("torch")] + out if torch_first else out + [Variant("torch")]
    # torch's float32 GEMM, timed on every CPU: where there are no bf16 units (AVX2) it is the fastest many-token
    # product (our kernels' float32 FMAs run at about half its speed there)
    if (kind == "dense" and n > 4) or (kind == "experts" and n > TORCH_BF16_MIN_TOKENS):
        out.append(Variant(TORCH_F32))
    return out


def choices() -> dict[str, str]:
    """The choices made on this CPU and build so far: product -> variant."""
    return choice.chooser().choices()
