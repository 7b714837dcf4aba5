"""The whole model through the native CPU fast path (``GPTOSS_KERNELS=auto`` on the CPU) against the plain-torch
reference path (``off``) on the same weights: prompts longer than the 128-token window, two sequences batched,
prefill in chunks, then decode steps; greedy generation; bf16 as close to float32 as the bf16 reference is."""

import pytest
import torch

from gptoss import kernels
from gptoss.engine import LLM, SamplingParams
from gptoss.kernels import cpu
from gptoss.model import KVCache, ModelConfig, StepBatch, Transformer
from gptoss.model.synthetic import random_tensors

CONFIGS = {
    "tiny-window16": ModelConfig.preset("tiny").replace(vocab_size=3000),
    "tiny-window128": ModelConfig.preset("tiny").replace(vocab_size=3000, sliding_window=128, num_experts=6),
    "small": ModelConfig.preset("small").replace(vocab_size=3000, num_hidden_layers=2, intermediate_size=96),
}


def build(config, dtype=torch.float32, seed=3):
    return Transformer.from_tensors(config, random_tensors(config, seed, torch.float32), dtype=dtype)


def per_position_err(got, want):
    return float(((got.float() - want.float()).norm(dim=-1) / want.float().norm(dim=-1)).max())


@pytest.fixture
def counted(monkeypatch):
    """Counts calls into the native expert kernel, so a test knows the fast path really ran."""
    calls = []
    real = cpu.moe_experts
    monkeypatch.setattr(cpu, "moe_experts", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def run_fast(model, seqs, chunks, decode_steps):
    """Two sequences in one batch: prefill ``chunks`` (per step: a length for each), then decode steps with
    one token each. Returns each sequence's logits at every position it was fed."""
    cache = KVCache(model.config, num_slots=3, max_len=max(map(len, seqs)) + 1, dtype=model.dtype)
    out = [[] for _ in seqs]
    pos = [0, 0]
    steps = chunks + [[1, 1]] * decode_steps
    for lens in steps:
        toks = torch.cat([seqs[b][pos[b] : pos[b] + n] for b, n in enumerate(lens)])
        logits = model.step(toks, StepBatch.of([2, 0], pos, lens), cache)
        for b, part in enumerate(torch.split(logits, lens)):
            out[b].append(part)
        pos = [p + n for p, n in zip(pos, lens)]
    return [torch.cat(o) for o in out]


def sequences(vocab, lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g) for n in lengths]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fast_logits_equal_reference_float32(name, counted):
    model = build(CONFIGS[name])
    seqs = sequences(model.config.vocab_size, [150, 141])
    got = run_fast(model, seqs, chunks=[[70, 40], [75, 96]], decode_steps=5)
    assert counted, "the native kernels did not run"
    with kernels.use("off"):
        for s, g in zip(seqs, got):
            want = model(s)
            assert per_position_err(g, want) < 1e-4


def test_forced_portable_build_through_the_model(monkeypatch, counted):
    monkeypatch.setenv("GPTOSS_CPU_ISA", "portable")
    model = build(CONFIGS["tiny-window16"])
    seqs = sequences(model.config.vocab_size, [40, 33], seed=2)
    got = run_fast(model, seqs, chunks=[[20, 13], [18, 18]], decode_steps=2)
    assert counted
    with kernels.use("off"):
        for s, g in zip(seqs, got):
            assert per_position_err(g, model(s)) < 1e-4


def test_bf16_fast_path_as_close_to_float32_as_the_bf16_reference():
    config = CONFIGS["tiny-window128"]
    ref32 = build(config)
    model = build(config, torch.bfloat16)
    seqs = sequences(config.vocab_size, [140, 131], seed=4)
    got = run_fast(model, seqs, chunks=[[100, 31], [38, 98]], decode_steps=2)
    with kernels.use("off"):
        for s, g in zip(seqs, got):
            want = ref32(s)
            ref16 = model(s)
            assert per_position_err(g, want) <= max(1.5 * per_position_err(ref16, want), 1e-3)


def test_greedy_generation_identical_to_reference(counted):
    model = build(CONFIGS["tiny-window128"], seed=5)
    params = SamplingParams(temperature=0, max_tokens=8)
    prompts = [list(range(100, 240)), list(range(7, 20))]
    with kernels.use("off"):
        want = LLM(model, max_batch=2, max_model_len=200).generate(prompts, params)
    got = LLM(model, max_batch=2, max_model_len=200).generate(prompts, params)
    assert counted
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
