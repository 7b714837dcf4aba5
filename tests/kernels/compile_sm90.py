"""Compile every kernel, at the specialisations gpt-oss uses, for an H100 (sm_90) — no GPU needed: Triton
ships ptxas. Catches what the interpreter cannot: type and layout errors only the compiler sees, and
register spills. Prints one line a kernel; exits 1 if any fails. Run without TRITON_INTERPRET.

    python tests/kernels/compile_sm90.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from gptoss.kernels import attention, moe, norm_rope

TARGET = GPUTarget("cuda", 90, 32)
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def compile_one(name, fn, types, const, warps, stages) -> bool:
    params = fn.arg_names
    signature = {p: "constexpr" if p in const else types[p] for p in params}
    constexprs = {(params.index(p),): v for p, v in const.items()}
    try:
        k = triton.compile(
            ASTSource(fn, signature, constexprs=constexprs),
            target=TARGET,
            options={"num_warps": warps, "num_stages": stages},
        )
    except Exception as exc:  # report every failure, not only the first
        print(f"FAIL {name}: {type(exc).__name__}: {str(exc)[:2000]}")
        return False
    usage = ""
    if os.path.exists(CUOBJDUMP):
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(k.asm["cubin"])
            f.flush()
            out = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True).stdout
        m = re.search(r"REG:(\d+).*?STACK:(\d+)", out)
        usage = f" registers {m.group(1)}, stack {m.group(2)} bytes" if m else ""
    print(f"ok   {name}:{usage}")
    return True


def main() -> int:
    ok = True
    bf16 = "*bf16"
    h, i = 2880, 2880
    for n_tok, experts in [(1, 32), (64, 32), (2048, 32), (16384, 32), (64, 128)]:
        bm, bn, bk, warps, stages = moe._config(n_tok * 4, experts, h, i)
        ok &= compile_one(
            f"mlp1 {bm}x{bn}x{bk}/{warps}w",
            moe._mlp1_kernel,
            dict(
                x_ptr=bf16,
                pair_ptr="*i32",
                block_expert_ptr="*i32",
                w_ptr="*u8",
                s_ptr="*u8",
                bias_ptr=bf16,
                h_ptr=bf16,
                H="i32",
                inter="i32",
                E="i32",
                alpha="fp32",
                limit="fp32",
            ),
            dict(K=4, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk),
            warps,
            stages,
        )
        ok &= compile_one(
            f"mlp2 {bm}x{bn}x{bk}/{warps}w",
            moe._mlp2_kernel,
            dict(
                h_ptr=bf16,
                pair_ptr="*i32",
                block_expert_ptr="*i32",
                w_ptr="*u8",
                s_ptr="*u8",
                bias_ptr=bf16,
                route_ptr="*fp32",
                y_ptr=bf16,
                H="i32",
                inter="i32",
                E="i32",
            ),
            dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk),
            warps,
            stages,
        )
    for n_tok, experts in [(1, 32), (64, 32), (64, 128)]:
        p = n_tok * 4
        p_max = -(-(p + min(experts, p) * 15) // 16) * 16
        ok &= compile_one(
            f"route {n_tok}x{experts}",
            moe._route_kernel,
            dict(
                logits_ptr=bf16,
                w_ptr="*fp32",
                idx_ptr="*i32",
                pair_ptr="*i32",
                block_expert_ptr="*i32",
                N="i32",
                E="i32",
                P_MAX="i32",
                NUM_BLOCKS="i32",
            ),
            dict(
                K=4,
                BM=16,
                BLOCK_N=triton.next_power_of_2(n_tok),
                BLOCK_K=4,
                BLOCK_E=experts,
                BLOCK_PMAX=triton.next_power_of_2(p_max),
                BLOCK_NB=triton.next_power_of_2(p_max // 16),
            ),
            8,
            1,
        )
    ok &= compile_one(
        "combine",
        moe._combine_kernel,
        dict(y_ptr=bf16, res_ptr=bf16, out_ptr=bf16, H="i32"),
        dict(K=4, HAS_RES=True, BLOCK=1024),
        4,
        1,
    )
    meta = dict(table_ptr="*i64", kv_len_ptr="*i64", sinks_ptr="*fp32", qk_scale="fp32", table_stride="i32")
    heads = dict(HQ=64, HK=8, G=8, D=64, BS=16)
    for window in (0, 128):
        for block_m in (16, 128):
            ok &= compile_one(
                f"prefill window {window} rows {block_m}",
                attention._prefill_kernel,
                dict(
                    q_ptr=bf16,
                    k_ptr=bf16,
                    v_ptr=bf16,
                    o_ptr=bf16,
                    cu_q_ptr="*i64",
                    q_len_ptr="*i64",
                    tiles_per_seq="i32",
                    **meta,
                ),
                dict(WINDOW=window, BLOCK_M=block_m, BLOCK_N=64, **heads),
                4 if block_m <= 64 else 8,
                2,
            )
        for splits in (1, 16):
            ok &= compile_one(
                f"decode window {window} splits {splits}",
                attention._decode_kernel,
                dict(
                    q_ptr=bf16,
                    k_ptr=bf16,
                    v_ptr=bf16,
                    o_ptr=bf16,
                    po_ptr="*fp32",
                    pm_ptr="*fp32",
                    pl_ptr="*fp32",
                    **meta,
                ),
                dict(WINDOW=window, SPLITS=splits, BLOCK_G=16, BLOCK_N=32, **heads),
                4,
                3,
            )
    ok &= compile_one(
        "decode reduce",
        attention._decode_reduce_kernel,
        dict(po_ptr="*fp32", pm_ptr="*fp32", pl_ptr="*fp32", o_ptr=bf16),
        dict(HQ=64, D=64, SPLITS=16, BLOCK_S=16),
        1,
        1,
    )
    ok &= compile_one(
        "rms_norm",
        norm_rope._rms_norm_kernel,
        dict(x_ptr=bf16, scale_ptr="*fp32", out_ptr=bf16, H="i32", eps="fp32"),
        dict(BLOCK=4096),
        8,
        1,
    )
    ok &= compile_one(
        "rope_store",
        norm_rope._rope_store_kernel,
        dict(qkv_ptr=bf16, cos_ptr="*fp32", sin_ptr="*fp32", slot_ptr="*i64", q_ptr=bf16, k_ptr=bf16, v_ptr=bf16),
        dict(HQ=64, HK=8, D=64, HALF=32, BLOCK_HALF=32),
        1,
        1,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("run without TRITON_INTERPRET: the interpreter's kernels cannot be compiled")
    sys.exit(main())
