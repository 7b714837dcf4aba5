"""Automatic prefix caching: a request that starts with tokens an earlier one computed reuses their keys
and values (whole blocks, keyed by a hash chain of the tokens and a salt) and computes only the rest — and
gets exactly what a cold prefill gives, on banded and dense layers, alone or batched, under eviction and
preemption; requests with another salt see nothing."""

import pytest
import torch

from gptoss import kernels
from gptoss.engine import LLM, SamplingParams
from gptoss.errors import GptossError
from gptoss.model import StepBatch
from gptoss.model.paged_cache import FULL, SLIDING, PagedKVCache, chain_hashes, salt_key
from tests.helpers import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

BS, WINDOW = 4, 8  # small blocks and a small band, so that every offset is cheap to reach


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=11, sliding_window=WINDOW, vocab_size=512)  # layer 0 banded, layer 1 dense


def _tokens(n, seed):
    return torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(seed))


def _warm_logits(model, cache, tokens, slot=1):
    """Adopt ``tokens``' cached prefix in ``slot``, compute the rest; (positions reused, their logits)."""
    reused = cache.adopt(slot, tokens.tolist())
    rest = tokens[reused:]
    logits = model.step(rest, StepBatch.single(len(rest), start=reused, slot=slot), cache)
    cache.free(slot)
    return reused, logits


@pytest.mark.parametrize("mode", ["auto", "off"])  # the native CPU backend and the plain reference
def test_reused_prefix_gives_cold_logits_at_every_offset(model, mode):
    """The second sequence shares the first one's first ``p`` tokens, for ``p`` over several blocks and
    windows: every reuse point (a block boundary) modulo the window, every divergence point modulo a block."""
    first = _tokens(40, seed=1)
    with kernels.use(mode):  # (a pool large enough that nothing is evicted)
        cache = PagedKVCache(model.config, num_slots=2, max_len=64, block_size=BS, num_blocks=400)
        model.step(first, StepBatch.single(40, slot=0), cache)
        cache.free(0)  # its blocks stay cached
        worst = 0.0
        for p in range(1, 34):  # reuse points 0, 4, 8, ... (0 and 4 modulo the window), p % 4 all four
            second = torch.cat([first[:p], _tokens(5, seed=100 + p)])
            reused, warm = _warm_logits(model, cache, second)
            assert reused == p // BS * BS
            cold = model(second)[reused:]
            worst = max(worst, float((warm - cold).abs().max()))
        assert worst < 1e-5, worst


def test_a_prefix_whose_band_was_evicted_is_reused_only_up_to_a_cached_band(model):
    first = _tokens(40, seed=2)
    cache = PagedKVCache(model.config, num_slots=2, max_len=64, block_size=BS)
    model.step(first, StepBatch.single(40, slot=0), cache)
    cache.free(0)
    band = cache.allocators[SLIDING]
    key = chain_hashes(salt_key(None), first.tolist(), BS)[5]  # the banded block of positions 20..23
    block = band.cached.pop(key)
    del band.hash_of[block]
    band.evictable.pop(block)
    band.free_list.append(block)
    assert cache.allocators[FULL].lookup(key) is not None  # its dense twin is still there
    # positions 24+ need banded blocks 4 and 5 (the window of 8 back from 24): fall back to 20 (blocks 3, 4)
    second = torch.cat([first[:26], _tokens(5, seed=3)])
    reused, warm = _warm_logits(model, cache, second)
    assert reused == 20
    assert float((warm - model(second)[20:]).abs().max()) < 1e-5
    # a prefix past the hole needs only later banded blocks: all of the first sequence's 40 tokens count
    third = torch.cat([first, _tokens(3, seed=4)])
    reused, warm = _warm_logits(model, cache, third)
    assert reused == 40 and float((warm - model(third)[40:]).abs().max()) < 1e-5


def test_another_salt_sees_nothing_and_the_same_salt_everything(model):
    tokens = _tokens(30, seed=5)
    cache = PagedKVCache(model.config, num_slots=2, max_len=64, block_size=BS)
    cache.adopt(0, tokens.tolist(), salt="alice")
    model.step(tokens, StepBatch.single(30, slot=0), cache)
    cache.free(0)
    assert cache.adopt(1, tokens.tolist(), salt="bob") == 0
    assert cache.adopt(1, tokens.tolist(), salt=None) == 0
    assert cache.adopt(1, tokens.tolist(), salt="alice") == 28  # (29 // 4) blocks: the last token is computed


def _greedy(llm, prompts, n=10):
    return [o.token_ids for o in llm.generate(prompts, SamplingParams(temperature=0, max_tokens=n))]


def test_greedy_output_identical_with_and_without_reuse_alone_and_batched(model):
    base = _tokens(50, seed=6).tolist()
    turns = [base, base + [7, 8, 9], base[:23] + [1] * 9]
    cold = LLM(model, max_batch=4, max_model_len=128, prefix_caching=False)
    warm = LLM(model, max_batch=4, max_model_len=128)
    want_alone = [_greedy(cold, [t])[0] for t in turns]
    assert [_greedy(warm, [t])[0] for t in turns] == want_alone
    assert warm.engine.cached_tokens > 0 and cold.engine.cached_tokens == 0
    batch = [base + [3], base + [4, 5], base[:37]]
    assert _greedy(warm, batch) == _greedy(cold, batch)


def test_generated_tokens_are_cached_for_the_next_turn(model):
    llm = LLM(model, max_batch=2, max_model_len=128)
    prompt = _tokens(20, seed=7).tolist()
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=20))[0].token_ids
    before = llm.engine.cached_tokens
    nxt = prompt + out + [5, 6]  # the answer sent back with the next message, as a chat client does
    seq = llm.engine.add_request(nxt, SamplingParams(temperature=0, max_tokens=1))
    while not seq.is_finished:
        llm.engine.step()
    # prompt and answer were cached up to the last full block the answer's next-to-last token filled
    assert seq.cached_tokens == (len(prompt) + len(out) - 1) // 16 * 16 > len(prompt)
    assert llm.engine.cached_tokens - before == seq.cached_tokens


def test_eviction_under_a_tiny_budget_keeps_answers_right(model):
    """A pool of 8 blocks of 16: each new conversation evicts the least recently used blocks of the others."""
    prompts = [_tokens(40, seed=20 + i).tolist() for i in range(4)]
    cold = LLM(model, max_batch=1, max_model_len=128, prefix_caching=False)
    tiny = LLM(model, max_batch=1, max_model_len=128, kv_cache_tokens=8 * 16)
    want = [_greedy(cold, [p])[0] for p in prompts + prompts[::-1]]
    got = [_greedy(tiny, [p])[0] for p in prompts + prompts[::-1]]
    assert got == want
    evictions = sum(a.evictions for a in tiny.engine.runner.cache.allocators.values())
    assert evictions > 0
    assert tiny.engine.prefix_hits >= 1  # the most recent conversation came back from the cache


def test_preemption_recomputes_from_cached_blocks_and_answers_right(model):
    prompts = [_tokens(n, seed=30 + n).tolist() for n in (30, 45, 20)]
    params = SamplingParams(temperature=0, max_tokens=40)
    want = [
        o.token_ids for o in LLM(model, max_batch=3, max_model_len=128, prefix_caching=False).generate(prompts, params)
    ]
    llm = LLM(model, max_batch=3, max_model_len=128, kv_cache_tokens=10 * 16)
    got = [o.token_ids for o in llm.generate(prompts, params)]
    assert got == want
    assert llm.engine.scheduler.num_preempted > 0


def test_a_prompt_the_cache_cannot_hold_is_one_clear_error(model):
    llm = LLM(model, max_batch=1, max_model_len=1000, kv_cache_tokens=64)
    with pytest.raises(GptossError, match="KV cache holds 64 .*kv_cache_tokens"):
        llm.generate([list(range(70))], SamplingParams(max_tokens=1))


def test_the_default_context_is_the_models_own(model):
    llm = LLM(model, max_batch=1)
    assert llm.max_model_len == model.config.max_position_embeddings == 131072
