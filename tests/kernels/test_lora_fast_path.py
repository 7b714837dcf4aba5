"""LoRA adapters and dense experts through the fast path (Triton kernels over the paged cache; on the CPU
under the interpreter) equal the reference path: attention deltas are added to the kernels' projections,
and steps whose adapters touch the experts, or whose experts are dense, run the reference experts."""

import pytest
import torch

from gptoss import kernels
from gptoss.engine import LLM, SamplingParams
from gptoss.model import StepBatch
from gptoss.model.lora import LoraSet, random_adapter
from gptoss.model.moe import DenseExpertWeight
from gptoss.model.paged_cache import PagedKVCache
from tests.helpers import tiny_model
from tests.kernels.conftest import rel_err


@pytest.mark.parametrize("experts", [False, True])
def test_adapter_logits_through_kernels_equal_reference(device, experts):
    model = tiny_model(seed=4)
    lora = LoraSet.of(model)
    lora.add_all([("a", random_adapter(model.config, "a", 4, experts=experts, seed=1, scale=0.05))])
    tokens = torch.randint(0, 199998, (13,), generator=torch.Generator().manual_seed(1))
    with lora.active([(1, 13)]):
        want = model(tokens)
    assert rel_err(want, model(tokens)) > 1e-3  # the adapter changes the output
    cache = PagedKVCache(model.config, num_slots=2, max_len=14, block_size=8, device=device, dtype=model.dtype)
    out, start = [], 0
    with kernels.use("on"):
        for n in [10] + [1] * 3:
            with lora.active([(1, n)]):
                out.append(
                    model.step(
                        tokens[start : start + n], StepBatch.single(n, start=start, slot=1, device=device), cache
                    )
                )
            start += n
    assert rel_err(torch.cat(out), want) < 1e-5


def test_mixed_adapter_batch_through_the_kernels_equals_the_reference_engine(device):
    model = tiny_model(seed=5)
    LoraSet.of(model).add_all(
        [
            (n, random_adapter(model.config, n, 4, experts=n == "e", seed=k, scale=0.05))
            for k, n in enumerate(["a", "e"])
        ]
    )
    prompts = [list(range(100, 103)), list(range(200, 209)), list(range(300, 305))]
    params = [SamplingParams(temperature=0, max_tokens=3, lora=n) for n in ("a", None, "e")]
    with kernels.use("off"):
        want = LLM(model, max_batch=3, max_model_len=64).generate(prompts, params)
    with kernels.use("on"):
        got = LLM(model, max_batch=3, max_model_len=64).generate(prompts, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in want]


def test_dense_experts_through_kernels_equal_reference(device):
    packed = tiny_model(seed=6)
    dense = tiny_model(seed=6)
    for block in dense.block:  # the same numbers, stored dense as transformers saves them
        for name in ("mlp1_weight", "mlp2_weight"):
            w = getattr(block.mlp, name)
            d = DenseExpertWeight(w.blocks.shape[0], w.rows, w.cols)
            d.weight = w.dequantize(torch.arange(w.blocks.shape[0]), torch.float32).transpose(1, 2).contiguous()
            setattr(block.mlp, name, d)
    tokens = torch.arange(500, 516)
    want = packed(tokens)
    cache = PagedKVCache(dense.config, num_slots=2, max_len=17, block_size=8, device=device, dtype=dense.dtype)
    with kernels.use("on"):
        got = dense.step(tokens, StepBatch.single(16, slot=1, device=device), cache)
    assert rel_err(got, want) < 1e-5
