"""Prompt log-probabilities (SamplingParams.prompt_logprobs, what /v1/completions' echo + logprobs reads):
equal to the log-softmax of a plain forward pass over the same token ids, alone or batched, in chunks or whole,
with the prefix cache on (a prompt asking for them computes every position, even when cached) or off."""

import pytest
import torch

from gptoss.engine import LLMEngine, SamplingParams
from tests.helpers import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=5)


def expected(model, ids: list[int], k: int):
    lp = torch.log_softmax(model(torch.tensor(ids)).float(), dim=-1)
    chosen = [float(lp[p - 1, ids[p]]) for p in range(1, len(ids))]
    tops = torch.topk(lp[:-1], k, dim=-1) if k else None
    return chosen, tops


def check(model, ids, got, k):
    chosen, tops = expected(model, ids, k)
    assert got[0] is None and len(got) == len(ids)  # the first token has nothing before it
    assert [e.token for e in got[1:]] == ids[1:]
    assert torch.allclose(torch.tensor([e.logprob for e in got[1:]]), torch.tensor(chosen), atol=1e-4)
    if k:
        assert [[t for t, _ in e.top] for e in got[1:]] == tops.indices.tolist()
        assert torch.allclose(torch.tensor([[v for _, v in e.top] for e in got[1:]]), tops.values, atol=1e-4)


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_prompt_logprobs_equal_a_forward_pass_alone_and_batched(model, prefix_caching):
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 199998, (n,), generator=gen).tolist() for n in (2, 9, 37, 70)]
    # prefill chunks of 24 tokens: the long prompts are computed over several steps, beside other requests
    engine = LLMEngine(model, max_batch=4, max_model_len=128, max_prefill_tokens=24, prefix_caching=prefix_caching)
    seqs = [
        engine.add_request(ids, SamplingParams(max_tokens=2, prompt_logprobs=k, temperature=0))
        for ids, k in zip(prompts, (0, 3, 5, 2))
    ]
    plain = engine.add_request(prompts[1], SamplingParams(max_tokens=2, temperature=0))  # asks for none
    while engine.has_work:
        engine.step()
    for seq, ids, k in zip(seqs, prompts, (0, 3, 5, 2)):
        check(model, ids, seq.prompt_logprobs, k)
    assert plain.prompt_logprobs is None and plain.output_ids == seqs[1].output_ids  # generation unchanged
    again = engine.add_request(prompts[3], SamplingParams(max_tokens=1, prompt_logprobs=2))  # its blocks are cached now
    while engine.has_work:
        engine.step()
    check(model, prompts[3], again.prompt_logprobs, 2)
    alone = LLMEngine(model, max_batch=1, max_model_len=128, prefix_caching=prefix_caching)
    one = alone.add_request(prompts[3], SamplingParams(max_tokens=1, prompt_logprobs=2))
    while alone.has_work:
        alone.step()
    check(model, prompts[3], one.prompt_logprobs, 2)
    # alone in one chunk or batched in three: the same tokens at the top, values within float noise
    assert [[t for t, _ in e.top] for e in one.prompt_logprobs[1:]] == [
        [t for t, _ in e.top] for e in seqs[3].prompt_logprobs[1:]
    ]
    assert max(abs(a.logprob - b.logprob) for a, b in zip(one.prompt_logprobs[1:], seqs[3].prompt_logprobs[1:])) < 1e-4
