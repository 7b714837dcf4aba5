"""The native CPU kernels (gptoss.kernels.cpu) against their plain-torch references, for every instruction
set this machine runs (the portable build always among them), at odd sizes."""

import pytest
import torch

from gptoss.kernels import cpu
from gptoss.kernels.cpu import chooser
from gptoss.kernels.cpu.builder import BuildError, runnable_isas
from gptoss.kernels.cpu.chooser import Variant
from gptoss.model.moe import experts_reference
from gptoss.model.mxfp4 import MXFP4Weight, dequantize

ISAS = runnable_isas()


def rel_err(out, ref):
    return float((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


def random_mxfp4(*shape, seed=0, scale_lo=118, scale_hi=130):
    g = torch.Generator().manual_seed(seed)
    *lead, rows, cols = shape
    blocks = torch.randint(0, 256, (*lead, rows, cols // 32, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(scale_lo, scale_hi, (*lead, rows, cols // 32), generator=g, dtype=torch.uint8)
    return blocks, scales


def test_every_runnable_variant_builds_and_says_its_name():
    assert ISAS[-1] == "portable"
    for isa in ISAS:
        assert cpu.isa_name(isa) == isa


@pytest.mark.parametrize("isa", ISAS)
def test_mxfp4_decode_is_bit_exact(isa):
    # every byte value, and scales over the whole E8M0 range (0 = 2**-127 subnormal, 255 overflows to inf)
    blocks = torch.arange(256, dtype=torch.uint8).repeat(16).reshape(16, 16, 16)
    scales = torch.arange(256, dtype=torch.uint8).reshape(16, 16)
    want = dequantize(blocks, scales, torch.float32)
    got = cpu.mxfp4_dequantize(blocks, scales, isa=isa)
    nan = want.isnan()  # 0 * inf (code 0 or 8 under scale 255): NaN either way, its sign bit unspecified
    assert torch.equal(got.isnan(), nan) and bool(nan.any())
    if isa == "neon":  # decodes through small integers: -0.0 comes out as +0.0, every value otherwise exact
        assert torch.equal(got[~nan], want[~nan])
    else:
        assert torch.equal(got[~nan].view(torch.int32), want[~nan].view(torch.int32))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", ["float32", "bfloat16", "mxfp4"])
@pytest.mark.parametrize("n", [1, 5, 8, 13])
def test_linear_matches_torch(isa, kind, n):
    g = torch.Generator().manual_seed(n)
    m, k = 37, (96 if kind == "mxfp4" else 70)  # odd rows; a K that leaves a tail for the dense kinds
    x = torch.randn(n, k, generator=g)
    if kind == "mxfp4":
        blocks, scales = random_mxfp4(m, k, seed=n)
        w_ref, args = dequantize(blocks, scales, torch.float32), dict(weight=blocks, scales=scales)
        bias = torch.randn(m, generator=g).bfloat16()
    else:
        w = torch.randn(m, k, generator=g).to(getattr(torch, kind))
        w_ref, args = w.float(), dict(weight=w)
        bias = None if n == 5 else torch.randn(m, generator=g).to(w.dtype)
    want = torch.nn.functional.linear(x, w_ref, None if bias is None else bias.float())
    got = cpu.linear(x, bias=bias, isa=isa, **args)
    assert got.dtype == torch.float32 and got.shape == (n, m)
    assert rel_err(got, want) < 1e-6


def experts(num_experts, hidden, inter, seed, bias_dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w1, w2 = MXFP4Weight(num_experts, 2 * inter, hidden), MXFP4Weight(num_experts, hidden, inter)
    w1.blocks, w1.scales = random_mxfp4(num_experts, 2 * inter, hidden, seed=seed, scale_lo=121, scale_hi=125)
    w2.blocks, w2.scales = random_mxfp4(num_experts, hidden, inter, seed=seed + 1, scale_lo=121, scale_hi=125)
    b1 = torch.randn(num_experts, 2 * inter, generator=g).to(bias_dtype)
    b2 = torch.randn(num_experts, hidden, generator=g).to(bias_dtype)
    return w1, b1, w2, b2


def routing(n, num_experts, k, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, num_experts, generator=g)
    top = torch.topk(logits, k, dim=-1)
    return torch.softmax(top.values, -1), top.indices


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [1, 3, 11, 37])
def test_moe_experts_match_reference(isa, n):
    e, h, inter = 5, 64, 96  # 2*inter = 192 gate/up rows
    w1, b1, w2, b2 = experts(e, h, inter, seed=n)
    t = torch.randn(n, h, generator=torch.Generator().manual_seed(7)) * 3  # large enough to hit the clamps
    weights, indices = routing(n, e, 3, seed=n)
    want = experts_reference(t, weights, indices, w1, b1, w2, b2, 1.702, 7.0)
    got = cpu.moe_experts(t, weights, indices, w1, b1, w2, b2, 1.702, 7.0, isa=isa)
    assert rel_err(got, want) < 1e-5


def test_moe_experts_bf16_biases_and_activations():
    w1, b1, w2, b2 = experts(4, 64, 64, seed=3, bias_dtype=torch.bfloat16)
    t = torch.randn(9, 64, generator=torch.Generator().manual_seed(2)).bfloat16()
    weights, indices = routing(9, 4, 2, seed=1)
    want = experts_reference(t.float(), weights, indices, w1, b1.float(), w2, b2.float())
    got = cpu.moe_experts(t, weights, indices, w1, b1, w2, b2)
    assert rel_err(got, want) < 1e-5


def test_forcing_the_portable_build(monkeypatch):
    monkeypatch.setenv("GPTOSS_CPU_ISA", "portable")
    assert cpu.chosen_isa() == "portable"
    assert cpu.isa_name(cpu.chosen_isa()) == "portable"
    monkeypatch.setenv("GPTOSS_CPU_ISA", "sparc")
    with pytest.raises(ValueError, match="GPTOSS_CPU_ISA='sparc'"):
        cpu.chosen_isa()


def test_bad_inputs_name_what_was_wrong():
    with pytest.raises(ValueError, match="input has 3 features, the weight expects 4"):
        cpu.linear(torch.zeros(2, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="weight dtype torch.float16"):
        cpu.linear(torch.zeros(2, 4), torch.zeros(5, 4, dtype=torch.float16))


def test_threads_setting_and_bad_values(monkeypatch):
    before_torch, before_ours = torch.get_num_threads(), cpu._threads
    try:
        monkeypatch.setattr(cpu, "_threads", None)
        monkeypatch.setenv("GPTOSS_NUM_THREADS", "two")
        with pytest.raises(ValueError, match="GPTOSS_NUM_THREADS='two': expected a positive integer"):
            cpu.num_threads()
        monkeypatch.setenv("GPTOSS_NUM_THREADS", "1")
        assert cpu.num_threads() == 1 and torch.get_num_threads() == 1  # one pool: torch follows
        x, w = torch.randn(3, 64), torch.randn(40, 64).bfloat16()
        torch.testing.assert_close(cpu.linear(x, w), x @ w.float().T, rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="positive integer"):
            cpu.set_num_threads(0)
    finally:
        cpu._threads = before_ours
        torch.set_num_threads(before_torch)


def test_without_a_compiler_the_reference_path_runs_and_says_why(monkeypatch, tmp_path, capsys):
    from gptoss import kernels
    from gptoss.kernels.cpu import builder
    from tests.helpers import tiny_model

    monkeypatch.setattr(cpu, "_libs", {})
    monkeypatch.setattr(cpu, "_failed", {})
    monkeypatch.setattr(cpu, "_warned", False)
    monkeypatch.setenv("GPTOSS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(builder, "compiler", lambda: None)
    model = tiny_model()
    tokens = torch.arange(5)
    assert not kernels.cpu_active(tokens.float())
    logits = model(tokens)  # the reference path
    with kernels.use("off"):
        assert torch.equal(logits, model(tokens))
    err = capsys.readouterr().err
    assert err.count("native CPU kernels are unavailable") == 1 and "no C++ compiler found" in err


@pytest.mark.parametrize("isa", ISAS)
def test_linear_split_across_threads(isa):
    # large enough (rows * K * tokens >= 2**20) that the rows are split across the threads
    g = torch.Generator().manual_seed(2)
    x, w, b = (
        torch.randn(2, 1024, generator=g),
        torch.randn(1027, 1024, generator=g).bfloat16(),
        torch.randn(1027).bfloat16(),
    )
    want = torch.nn.functional.linear(x, w.float(), b.float())
    assert rel_err(cpu.linear(x, w, b, isa=isa), want) < 1e-6


# ----------------------------------------------------------------------------- bf16 models
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", ["bfloat16", "mxfp4"])
@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 20])
def test_linear_with_bf16_inputs(isa, kind, n):
    # a bf16 model's products: the inputs are rounded to bf16 (exactly what the model holds) where the variant
    # has bf16 dot products, and the sums stay float32 — so they match float32 products of the rounded inputs
    g = torch.Generator().manual_seed(n)
    m, k = 37, (96 if kind == "mxfp4" else 70)  # 3 MXFP4 blocks: an odd pair at the end; a dense tail
    if n == 20:
        m, k = 130, 2880  # the real hidden size; rows across both threads
    x = torch.randn(n, k, generator=g)
    if kind == "mxfp4":
        blocks, scales = random_mxfp4(m, k, seed=n)
        w_ref, args = dequantize(blocks, scales, torch.float32), dict(weight=blocks, scales=scales)
    else:
        w = torch.randn(m, k, generator=g).bfloat16()
        w_ref, args = w.float(), dict(weight=w)
    bias = torch.randn(m, generator=g).bfloat16()
    xin = x.bfloat16().float() if cpu.rounds_to_bf16(isa) else x
    want = torch.nn.functional.linear(xin, w_ref, bias.float())
    got = cpu.linear(x, bias=bias, isa=isa, bf16_inputs=True, **args)
    assert rel_err(got, want) < 1e-6


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [1, 3, 37])
def test_moe_experts_with_bf16_inputs_closer_than_the_bf16_reference(isa, n):
    e, h, inter = 5, 96, 160  # odd block counts (3 and 5 blocks a row)
    w1, b1, w2, b2 = experts(e, h, inter, seed=n)
    t = (torch.randn(n, h, generator=torch.Generator().manual_seed(7)) * 3).bfloat16()
    weights, indices = routing(n, e, 3, seed=n)
    want = experts_reference(t.float(), weights, indices, w1, b1, w2, b2, 1.702, 7.0)
    ref16 = experts_reference(t, weights.bfloat16(), indices, w1, b1.bfloat16(), w2, b2.bfloat16(), 1.702, 7.0)
    got = cpu.moe_experts(t, weights, indices, w1, b1, w2, b2, 1.702, 7.0, isa=isa, bf16_inputs=True)
    assert rel_err(got, want) < min(5e-3, rel_err(ref16, want))


def test_experts_with_many_tokens_through_the_bf16_gemm(monkeypatch):
    # On an AMX CPU a bf16 model's experts with >= GEMM_MIN_TOKENS tokens go to torch's bf16 GEMM over decoded
    # slices; forced here (any CPU runs the route), with slices smaller than an expert so several are joined.
    monkeypatch.setattr(cpu, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(cpu, "GEMM_ROWS", 64)
    routed = []
    real = cpu._experts_by_gemm
    monkeypatch.setattr(cpu, "_experts_by_gemm", lambda *a: routed.append(a[3]) or real(*a))
    n, e, h, inter = 40, 4, 96, 160
    w1, b1, w2, b2 = experts(e, h, inter, seed=5)
    t = (torch.randn(n, h, generator=torch.Generator().manual_seed(8)) * 3).bfloat16()
    weights, indices = routing(n, e, 2, seed=3)
    counts = torch.bincount(indices.view(-1), minlength=e)
    assert bool((counts >= cpu.GEMM_MIN_TOKENS).any()) and bool((counts < cpu.GEMM_MIN_TOKENS).any())
    want = experts_reference(t.float(), weights, indices, w1, b1, w2, b2, 1.702, 7.0)
    ref16 = experts_reference(t, weights.bfloat16(), indices, w1, b1.bfloat16(), w2, b2.bfloat16(), 1.702, 7.0)
    got = cpu.moe_experts(t, weights, indices, w1, b1, w2, b2, 1.702, 7.0, bf16_inputs=True)
    assert routed and sorted(routed[0]) == (counts >= cpu.GEMM_MIN_TOKENS).nonzero().view(-1).tolist()
    assert rel_err(got, want) < min(5e-3, rel_err(ref16, want))


def test_experts_with_many_tokens_through_the_float32_gemm(monkeypatch):
    # The torch32 variant: experts with >= GEMM_F32_MIN_TOKENS tokens go to torch's float32 GEMM over decoded
    # float32 slices (smaller than an expert here, so several are joined), the others to our kernel; a float32
    # model's result equals the reference as closely as the kernel's own.
    monkeypatch.setattr(cpu, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(cpu, "GEMM_ROWS", 64)
    monkeypatch.setattr(cpu, "GEMM_F32_MIN_TOKENS", 16)
    routed = []
    real = cpu._experts_by_gemm
    monkeypatch.setattr(cpu, "_experts_by_gemm", lambda *a: routed.append((a[3], a[-1])) or real(*a))
    n, e, h, inter = 40, 4, 96, 160
    w1, b1, w2, b2 = experts(e, h, inter, seed=5)
    t = torch.randn(n, h, generator=torch.Generator().manual_seed(8)) * 3
    weights, indices = routing(n, e, 2, seed=3)
    counts = torch.bincount(indices.view(-1), minlength=e)
    assert bool((counts >= 16).any()) and bool((counts < 16).any())
    want = experts_reference(t, weights, indices, w1, b1, w2, b2, 1.702, 7.0)
    with chooser.using(Fixed(Variant(cpu.TORCH_F32))):
        got = cpu.moe_experts(t, weights, indices, w1, b1, w2, b2, 1.702, 7.0)
    [(big, dtype)] = routed
    assert sorted(big) == (counts >= 16).nonzero().view(-1).tolist() and dtype == torch.float32
    assert rel_err(got, want) < 1e-5
    bf16 = cpu.moe_experts(t.bfloat16(), weights, indices, w1, b1, w2, b2, 1.702, 7.0, isa=ISAS[0], bf16_inputs=True)
    with chooser.using(Fixed(Variant(cpu.TORCH_F32))):
        got16 = cpu.moe_experts(t.bfloat16(), weights, indices, w1, b1, w2, b2, 1.702, 7.0, bf16_inputs=True)
    assert rel_err(got16, want) < max(5e-3, 2 * rel_err(bf16, want))


def test_dense_through_the_float32_gemm_matches_the_kernel(monkeypatch):
    # The torch32 variant of a bf16 Linear: the weight widened GEMM_ROWS rows at a time, float32 out.
    monkeypatch.setattr(cpu, "GEMM_ROWS", 48)
    g = torch.Generator().manual_seed(2)
    layer = torch.nn.Linear(96, 130, dtype=torch.bfloat16).requires_grad_(False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(130, 96, generator=g))
        layer.bias.copy_(torch.randn(130, generator=g))
    x = torch.randn(2, 9, 96, generator=g)
    want = torch.nn.functional.linear(x, layer.weight.float(), layer.bias.float())
    with chooser.using(Fixed(Variant(cpu.TORCH_F32))):
        got = cpu.dense(layer, x)
    assert got.shape == (2, 9, 130) and got.dtype == torch.float32
    assert rel_err(got, want) < 1e-6


class Fixed:
    """A chooser that always runs one variant (it must be among the candidates)."""

    def __init__(self, variant: Variant):
        self.variant = variant

    def run(self, key, weight_bytes, candidates, call, trial=None):
        assert self.variant in candidates, (key, candidates)
        return call(self.variant)


@pytest.mark.parametrize("isa", ISAS)
def test_mxfp4_to_bf16_is_exact(isa):
    blocks, scales = random_mxfp4(70, 96, seed=4, scale_lo=2, scale_hi=250)
    got = cpu.mxfp4_to_bf16(blocks, scales, isa=isa)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got.float(), dequantize(blocks, scales, torch.float32))


# ----------------------------------------------------------------------------- attention
def paged_batch(lens, starts, hq, hk, d, bs, dtype, seed):
    """Sequences with lens[b] new tokens after starts[b] cached ones, their blocks scattered over the pages."""
    g = torch.Generator().manual_seed(seed)
    kv = [s + n for s, n in zip(starts, lens)]
    width = max(-(-t // bs) for t in kv)
    table = (torch.randperm(len(lens) * width + 8, generator=g)[: len(lens) * width] + 1).view(len(lens), width)
    blocks = len(lens) * width + 9
    k_pages = torch.randn(blocks, bs, hk, d, generator=g).to(dtype)
    v_pages = torch.randn(blocks, bs, hk, d, generator=g).to(dtype)
    q = torch.randn(sum(lens), hq, d, generator=g)
    sinks = torch.randn(hq, generator=g)
    seq = torch.tensor([b for b, n in enumerate(lens) for _ in range(n)])
    pos = torch.tensor([starts[b] + j for b, n in enumerate(lens) for j in range(n)])
    cu = torch.tensor([sum(lens[:b]) for b in range(len(lens))])
    ref_args = (cu, torch.tensor(lens), torch.tensor(kv))
    return q, k_pages, v_pages, table, seq, pos, sinks, ref_args


def attention_reference(q, keys, values, seq_of, pos, sinks, sm_scale, window):
    """Float64 attention with sinks: token i attends to its sequence's keys at positions [lo, pos[i]]."""
    n, hq, d = q.shape
    hk = keys[0].shape[1]
    out = torch.empty(n, hq, d, dtype=torch.float64)
    for i in range(n):
        p = int(pos[i])
        lo = max(0, p - window + 1) if window else 0
        k = keys[seq_of[i]][lo : p + 1].double().repeat_interleave(hq // hk, dim=1)  # [S, HQ, D]
        v = values[seq_of[i]][lo : p + 1].double().repeat_interleave(hq // hk, dim=1)
        s = torch.einsum("hd,shd->hs", q[i].double(), k) * sm_scale
        s = torch.cat([s, sinks.double()[:, None]], dim=1)
        w = torch.softmax(s, dim=1)[:, :-1]
        out[i] = torch.einsum("hs,shd->hd", w, v)
    return out.reshape(n, hq * d)


def test_a_variant_that_fails_to_build_falls_back_to_the_next(monkeypatch):
    # e.g. a compiler too old for -mavx512bf16: the next variant runs instead of the slow reference path;
    # when the last (portable) one fails too, the error says why
    monkeypatch.delenv("GPTOSS_CPU_ISA", raising=False)
    monkeypatch.setattr(cpu, "_libs", {k: v for k, v in cpu._libs.items() if k != ISAS[0]})
    monkeypatch.setattr(cpu, "_failed", {ISAS[0]: "compiler says no"})
    if len(ISAS) > 1:
        assert cpu.chosen_isa() == ISAS[1]
        assert cpu.library().gptoss_isa().decode() == ISAS[1]
    else:  # the portable build is the only one: nothing to fall back to
        with pytest.raises(BuildError, match="compiler says no"):
            cpu.library()
    monkeypatch.setattr(cpu, "_failed", {isa: "compiler says no" for isa in ISAS})
    monkeypatch.setattr(cpu, "_libs", {})
    with pytest.raises(BuildError, match="compiler says no"):
        cpu.library()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("window", [0, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_attention_matches_the_reference(isa, window, dtype):
    """Scattered blocks, a decode token, a fresh prefill and a chunk after a cached prefix in one batch."""
    from gptoss.model.attention import paged_attention_reference

    hq, hk, d, bs = 6, 2, 24, 4
    starts, lens = [9, 0, 3], [1, 7, 4]
    kv = [s + n for s, n in zip(starts, lens)]
    q, k_pages, v_pages, table, seq, pos, sinks, ref_args = paged_batch(lens, starts, hq, hk, d, bs, dtype, window + 7)
    got = cpu.paged_attention(q, k_pages, v_pages, table, seq, pos, sinks, 0.2, window, isa=isa)
    want = paged_attention_reference(q, k_pages, v_pages, table, *ref_args, sinks, 0.2, window, max(lens))
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert rel_err(got, want) < 1e-5
    # and against attention in float64 over each sequence's keys gathered by position (what the pages hold)
    rows = lambda b, t: [int(table[b, p // bs]) * bs + p % bs for p in range(t)]  # noqa: E731
    keys = [k_pages.reshape(-1, hk, d)[rows(b, t)].float() for b, t in enumerate(kv)]
    values = [v_pages.reshape(-1, hk, d)[rows(b, t)].float() for b, t in enumerate(kv)]
    assert rel_err(got, attention_reference(q, keys, values, seq.tolist(), pos, sinks, 0.2, window)) < 1e-5


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("window", [0, 5, 13])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads", [(6, 2, 24), (16, 2, 64)])
def test_paged_attention_in_query_tiles_matches_the_reference(isa, window, dtype, heads):
    """Query tiles of every size (one query, a few, more than a sequence has) over sequences with 1 to 70 new
    tokens after cached prefixes that end mid-block, banded and dense, GQA groups of 3 and 8: each equals the
    reference, and the per-query kernel."""
    from gptoss.model.attention import paged_attention_reference

    hq, hk, d = heads
    lens, starts = [1, 7, 4, 70, 2, 1], [9, 0, 3, 30, 17, 5]
    q, k_pages, v_pages, table, seq, pos, sinks, ref_args = paged_batch(lens, starts, hq, hk, d, 4, dtype, window)
    want = paged_attention_reference(q, k_pages, v_pages, table, *ref_args, sinks, 0.2, window, max(lens))
    per_query = cpu.paged_attention(q, k_pages, v_pages, table, seq, pos, sinks, 0.2, window, isa=isa, tile=0)
    assert rel_err(per_query, want) < 1e-5
    for tile in (1, 3, 16, 128):
        got = cpu.paged_attention(q, k_pages, v_pages, table, seq, pos, sinks, 0.2, window, isa=isa, tile=tile)
        assert got.shape == want.shape
        assert rel_err(got, want) < 1e-5, tile
        assert rel_err(got, per_query) < 1e-5, tile


def test_paged_attention_names_a_table_outside_the_pages():
    q, pages = torch.zeros(1, 4, 8), torch.zeros(3, 4, 2, 8)
    with pytest.raises(ValueError, match="outside the 3 pages"):
        cpu.paged_attention(
            q, pages, pages, torch.tensor([[5]]), torch.tensor([0]), torch.tensor([0]), torch.zeros(4), 1.0, 0
        )
    with pytest.raises(ValueError, match="outside the block table"):
        cpu.paged_attention(
            q, pages, pages, torch.tensor([[1]]), torch.tensor([0]), torch.tensor([4]), torch.zeros(4), 1.0, 0
        )
    with pytest.raises(ValueError, match="page dtype torch.float16"):
        half = pages.half()
        cpu.paged_attention(
            q, half, half, torch.tensor([[1]]), torch.tensor([0]), torch.tensor([0]), torch.zeros(4), 1.0, 0
        )
