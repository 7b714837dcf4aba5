"""The choice of kernel variant by measurement (gptoss.kernels.cpu.chooser): kept beside the build, reused,
invalidated when the CPU or the build changes; never changing what a product computes. Timings are faked
here (a test must not depend on how fast this machine is at the moment)."""

import json

import pytest
import torch

from gptoss import kernels
from gptoss.kernels import cpu
from gptoss.kernels.cpu import builder, chooser
from gptoss.kernels.cpu.builder import runnable_isas
from gptoss.kernels.cpu.chooser import Chooser, Variant
from gptoss.model.moe import experts_reference
from tests.kernels.test_cpu_kernels import experts, random_mxfp4, rel_err, routing
from tests.kernels.test_cpu_model import (
    CONFIGS,
    build,
    per_position_err,
    run_fast,
    sequences,
)

ISAS = runnable_isas()
BIG = 64 << 20  # weight bytes: above the size from which products are timed
A, B = Variant("slow"), Variant("fast")


class FakeClock:
    """Stands in for the timing: each variant takes the seconds given; counts the timed runs."""

    def __init__(self, seconds):
        self.seconds, self.runs = seconds, 0

    def __call__(self, trial, variant):
        self.runs += 1
        return self.seconds[variant], trial(variant)


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock({A: 2.0, B: 1.0})
    monkeypatch.setattr(chooser, "_time_variant", fake)
    return fake


def test_the_fastest_variant_is_chosen_and_saved_beside_the_build(tmp_path, clock):
    c = Chooser(tmp_path)
    assert c.run("dense/1/8x8/t2", BIG, [A, B], lambda v: v.isa) == "fast"
    assert clock.runs >= 4  # each candidate once, then timed rounds
    data = json.loads(c.path().read_text())
    assert c.path().parent == tmp_path and data["choices"] == {"dense/1/8x8/t2": "fast"}
    assert (data["cpu"], data["build"]) == c.identity()
    clock.runs = 0
    again = Chooser(tmp_path)  # another process on the same CPU and build: no timing
    assert again.run("dense/1/8x8/t2", BIG, [A, B], lambda v: v.isa) == "fast" and clock.runs == 0


def test_the_choice_is_made_afresh_when_the_cpu_changes(tmp_path, clock, monkeypatch):
    Chooser(tmp_path).run("k", BIG, [A, B], lambda v: v.isa)
    clock.runs = 0
    monkeypatch.setattr(chooser, "cpu_identity", lambda: "Another CPU | avx2 fma")
    clock.seconds = {A: 1.0, B: 2.0}
    other = Chooser(tmp_path)
    assert other.run("k", BIG, [A, B], lambda v: v.isa) == "slow" and clock.runs > 0
    assert len(list(tmp_path.glob("choices-*.json"))) == 2  # one file a CPU and build


def test_the_choice_is_made_afresh_when_the_build_changes(tmp_path, clock, monkeypatch):
    first = Chooser(tmp_path)
    first.run("k", BIG, [A, B], lambda v: v.isa)
    edited = tmp_path / "gptoss_cpu.cpp"
    edited.write_bytes(builder.SOURCE.read_bytes() + b"\n// an edited kernel\n")
    monkeypatch.setattr(builder, "SOURCE", edited)
    second = Chooser(tmp_path)
    assert second.identity()[1] != first.identity()[1]
    clock.runs = 0
    second.run("k", BIG, [A, B], lambda v: v.isa)
    assert clock.runs > 0


def test_a_file_recorded_for_another_cpu_or_build_is_ignored(tmp_path, clock):
    c = Chooser(tmp_path)
    cpu_id, build_id = c.identity()
    for recorded in ({"cpu": "Some other CPU", "build": build_id}, {"cpu": cpu_id, "build": "0123456789abcdef"}):
        c.path().write_text(json.dumps({**recorded, "choices": {"k": "slow"}}))
        clock.runs = 0
        assert Chooser(tmp_path).run("k", BIG, [A, B], lambda v: v.isa) == "fast" and clock.runs > 0
    c.path().write_text("{not json")
    assert Chooser(tmp_path).run("k", BIG, [A, B], lambda v: v.isa) == "fast"


def test_small_products_and_near_ties_keep_the_default(tmp_path, clock):
    c = Chooser(tmp_path)
    assert c.run("small", 1 << 16, [A, B], lambda v: v.isa) == "slow" and clock.runs == 0
    clock.seconds = {A: 1.02, B: 1.0}  # within the noise margin
    assert c.run("tie", BIG, [A, B], lambda v: v.isa) == "slow"


def test_a_trial_decides_and_the_real_call_runs_once(tmp_path, clock):
    calls = []
    out = Chooser(tmp_path).run("k", BIG, [A, B], lambda v: calls.append(v) or v.isa, trial=lambda v: None)
    assert out == "fast" and calls == [B]


def test_a_variant_reads_back_from_its_name():
    for v in (Variant("avx2"), Variant("avx512", pf=8192), Variant("avx2", tile=16), Variant("neon", 4096, 32)):
        assert Variant.parse(str(v)) == v


def test_attention_tiles_are_chosen_by_timing_and_decode_is_not_timed(tmp_path, monkeypatch):
    from gptoss.model.attention import paged_attention_reference
    from tests.kernels.test_cpu_kernels import paged_batch

    monkeypatch.delenv("GPTOSS_CPU_ISA", raising=False)
    monkeypatch.setattr(chooser, "MIN_WEIGHT_BYTES", 0)
    isa = cpu.chosen_isa()
    seconds = {Variant(isa, tile=t): 2.0 for t in cpu.ATTENTION_TILES} | {Variant(isa): 3.0}
    seconds[Variant(isa, tile=16)] = 1.0
    fake = FakeClock(seconds)
    monkeypatch.setattr(chooser, "_time_variant", fake)
    lens, starts = [3, 140], [5, 11]  # the longer chunk is timed on a trial of its last tokens
    q, k_pages, v_pages, table, seq, pos, sinks, ref_args = paged_batch(lens, starts, 8, 2, 16, 4, torch.float32, 1)
    want = paged_attention_reference(q, k_pages, v_pages, table, *ref_args, sinks, 0.3, 0, max(lens))
    with chooser.using(Chooser(tmp_path)) as c:
        got = cpu.paged_attention(q, k_pages, v_pages, table, seq, pos, sinks, 0.3, 0)
        assert rel_err(got, want) < 1e-5 and fake.runs >= len(seconds)
        [(key, chosen)] = c.choices().items()
        assert key.startswith("attention/prefill/8x2x16/float32/dense/") and chosen == f"{isa}+tile16"
        fake.runs = 0
        last = torch.tensor([2, 142])  # one token a sequence: the per-query kernel, nothing timed
        decode = cpu.paged_attention(q[last], k_pages, v_pages, table, seq[last], pos[last], sinks, 0.3, 0)
        assert fake.runs == 0 and rel_err(decode, want[last]) < 1e-5


def test_forcing_an_instruction_set_skips_the_choice(monkeypatch):
    monkeypatch.setenv("GPTOSS_CPU_ISA", ISAS[-1])
    assert cpu._candidates("dense", 1) == [Variant(ISAS[-1])]
    assert cpu._candidates("experts", 1) == [Variant(ISAS[-1])]


def test_the_candidates_are_variants_this_cpu_builds(monkeypatch):
    monkeypatch.delenv("GPTOSS_CPU_ISA", raising=False)
    for kind in ("dense", "experts"):
        for n in (1, 3, 8, 100):
            cands = cpu._candidates(kind, n)
            assert len(set(cands)) == len(cands)
            assert all(v.isa in ISAS or (v.isa == "torch" and kind == "dense") or v.isa == cpu.TORCH_F32 for v in cands)
            # torch's float32 GEMM is timed on every CPU for many tokens, never for one token
            assert (Variant(cpu.TORCH_F32) in cands) == (n > (4 if kind == "dense" else cpu.TORCH_BF16_MIN_TOKENS))


@pytest.mark.parametrize("isa", ISAS)
def test_prefetch_distance_and_chunking_never_change_a_result(isa):
    # rows are handed to threads in chunks: which thread computes a row, and how far ahead it prefetches,
    # must not change a bit of the result
    lib = cpu.library(isa)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4100, 256, generator=g).bfloat16()
    x = torch.randn(3, 256, generator=g)
    blocks, scales = random_mxfp4(4100, 256, seed=1)
    w1, b1, w2, b2 = experts(6, 256, 192, seed=2, bias_dtype=torch.bfloat16)
    t = torch.randn(70, 256, generator=g) * 3
    weights, indices = routing(70, 6, 4, seed=3)
    default = lib.gptoss_set_tuning(0, 0)

    def products():
        out = []
        for n in (1, 3):
            for bf16 in (False, True):
                out.append(cpu.linear(x[:n], w, isa=isa, bf16_inputs=bf16))
                out.append(cpu.linear(x[:n], blocks, scales=scales, isa=isa, bf16_inputs=bf16))
        for n in (1, 11, 70):  # 70 tokens: 280 pairs, enough that the threads gather them
            for bf16 in (False, True):
                out.append(cpu.moe_experts(t[:n], weights[:n], indices[:n], w1, b1, w2, b2, isa=isa, bf16_inputs=bf16))
        return out

    before, threads = cpu._threads, torch.get_num_threads()
    try:
        cpu.set_num_threads(2)
        want = products()
        ref = experts_reference(t, weights, indices, w1, b1.float(), w2, b2.float(), 1.702, 7.0)
        assert rel_err(want[-2], ref) < 1e-5
        for pf, chunks in ((8192, 1), (131072, 64), (4096, 3)):
            lib.gptoss_set_tuning(pf, chunks)
            for a, b in zip(products(), want):
                assert torch.equal(a, b), (pf, chunks)
    finally:
        lib.gptoss_set_tuning(default, 16)
        cpu._threads = before
        torch.set_num_threads(threads)
        cpu._tuning.clear()


class Rotating:
    """A chooser that takes each candidate in turn, call after call: the model runs every variant the real
    chooser can pick, mixed across layers and steps."""

    def __init__(self):
        self.i, self.used = 0, set()

    def run(self, key, weight_bytes, candidates, call, trial=None):
        v = candidates[self.i % len(candidates)]
        self.i += 1
        self.used.add(v)
        return call(v)


def test_the_bf16_model_with_every_variant_mixed_matches_the_reference(monkeypatch):
    monkeypatch.delenv("GPTOSS_CPU_ISA", raising=False)
    rot = Rotating()
    config = CONFIGS["tiny-window16"]
    ref32, model = build(config), build(config, torch.bfloat16)
    seqs = sequences(config.vocab_size, [32, 20], seed=4)
    with chooser.using(rot):
        got = run_fast(model, seqs, chunks=[[20, 10], [10, 8]], decode_steps=2)
    assert {v.isa for v in rot.used} >= set(cpu._loadable_isas()) - {"portable"}
    with kernels.use("off"):  # the longer sequence (past the window); the other rode in the same batch
        want = ref32(seqs[0])
        assert per_position_err(got[0], want) <= max(1.5 * per_position_err(model(seqs[0]), want), 1e-3)


def test_experts_with_a_chosen_variant_match_the_reference(monkeypatch):
    monkeypatch.delenv("GPTOSS_CPU_ISA", raising=False)
    w1, b1, w2, b2 = experts(5, 64, 96, seed=1)
    t = torch.randn(70, 64, generator=torch.Generator().manual_seed(3)) * 3
    weights, indices = routing(70, 5, 3, seed=2)
    want = experts_reference(t, weights, indices, w1, b1, w2, b2, 1.702, 7.0)
    rot = Rotating()
    with chooser.using(rot):
        for _ in range(len(cpu._candidates("experts", 70))):
            assert rel_err(cpu.moe_experts(t, weights, indices, w1, b1, w2, b2), want) < 1e-5
