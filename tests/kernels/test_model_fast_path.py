"""The whole model through the fast path (Triton kernels over the paged cache) against the reference path.

On the CPU: float32 under the interpreter, a tiny model, prefill in chunks past the window and decode
steps. On a GPU: bf16 within bf16 tolerance of the float32 reference, the engine with CUDA graphs, and
gpt-oss-20b layer shapes."""

import pytest
import torch

from gptoss import kernels
from gptoss.engine import LLM, SamplingParams
from gptoss.model import ModelConfig, StepBatch, Transformer
from gptoss.model.paged_cache import PagedKVCache
from gptoss.model.synthetic import random_tensors
from tests.helpers import tiny_model
from tests.kernels.conftest import gpu_only, rel_err


def run_fast(model, tokens, chunks, device):
    """Prefill ``tokens`` in ``chunks`` then decode the rest one by one, through the kernels; returns
    the logits of every position."""
    cache = PagedKVCache(
        model.config, num_slots=2, max_len=len(tokens) + 1, block_size=8, device=device, dtype=model.dtype
    )
    out, start = [], 0
    with kernels.use("on"):
        for n in chunks + [1] * (len(tokens) - sum(chunks)):
            out.append(
                model.step(tokens[start : start + n], StepBatch.single(n, start=start, slot=1, device=device), cache)
            )
            start += n
    return torch.cat(out)


def test_logits_through_kernels_equal_reference(device):
    model = tiny_model(seed=4)  # window 16
    tokens = torch.randint(0, 199998, (30,), generator=torch.Generator().manual_seed(1))
    want = model(tokens)
    got = run_fast(model, tokens, [5, 19], device)
    per_pos = (got - want).norm(dim=-1) / want.norm(dim=-1)
    assert float(per_pos.max()) < 1e-5, per_pos


def test_engine_through_kernels_generates_as_reference(device):
    model = tiny_model(seed=5)
    params = SamplingParams(temperature=0, max_tokens=4)
    prompts = [list(range(100, 103)), list(range(200, 221))]
    want = LLM(model, max_batch=2, max_model_len=64).generate(prompts, params)
    with kernels.use("on"):
        got = LLM(model, max_batch=2, max_model_len=64, kv_cache="paged").generate(prompts, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in want]


# ----------------------------------------------------------------------------- GPU only
def gpu_model(config, dtype):
    return Transformer.from_tensors(config, random_tensors(config, 7, torch.float32), device="cuda", dtype=dtype)


@gpu_only
@pytest.mark.parametrize("preset", ["small", "20b-2-layers"])
def test_bf16_logits_through_kernels_within_bf16_tolerance(device, preset):
    """Fast bf16 logits are as close to the float32 reference as the bf16 reference path is (or 2e-2)."""
    config = (
        ModelConfig.preset("small")
        if preset == "small"
        else ModelConfig.preset("gpt-oss-20b").replace(num_hidden_layers=2)
    )
    ref32 = gpu_model(config, torch.float32)
    tokens = torch.randint(0, 199998, (300,), generator=torch.Generator().manual_seed(1)).cuda()
    want = ref32(tokens)
    del ref32
    model = gpu_model(config, torch.bfloat16)
    with kernels.use("off"):
        ref16 = model(tokens)
    got = run_fast(model, tokens, [100, 180], "cuda")
    assert rel_err(got, want) < max(2 * rel_err(ref16, want), 2e-2)


@gpu_only
def test_cuda_graph_decode_equals_eager(device):
    model = gpu_model(ModelConfig.preset("small"), torch.bfloat16)
    params = SamplingParams(temperature=0, max_tokens=40)
    prompts = [list(range(100, 100 + n)) for n in (3, 17, 60, 140, 5)]
    eager = LLM(model, max_batch=8, max_model_len=512)
    eager.engine.runner.graphs = None
    graphs = LLM(model, max_batch=8, max_model_len=512)
    assert graphs.engine.runner.graphs is not None
    a = eager.generate(prompts, params)
    b = graphs.generate(prompts, params)
    assert graphs.engine.runner.graphs.graphs and not graphs.engine.runner.graphs.failed
    same = sum(x.token_ids == y.token_ids for x, y in zip(a, b))
    assert same >= 4  # bf16: a near-tie may flip one greedy choice between batch shapes
