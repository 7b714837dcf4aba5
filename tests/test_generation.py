"""KV-cached generation: equal to full forward passes, batching-invariant, sampling controls."""

import pytest
import torch

from gptoss.engine import LLM, LLMEngine, SamplingParams
from gptoss.errors import GptossError
from gptoss.model import KVCache, StepBatch
from tests.helpers import tiny_model

# Hundreds of single-token decode steps of a tiny model: one thread (see the fixture).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=4)  # window 16: ring buffers wrap many times over 300 tokens


def test_decode_with_cache_equals_full_forward_at_every_step(model):
    tokens = torch.randint(0, 199998, (330,), generator=torch.Generator().manual_seed(1))
    full = model(tokens)
    cache = KVCache(model.config, num_slots=2, max_len=400)
    prompt = 20
    # slot 1, to make sure slots are honoured; the prompt goes in as two chunks (one longer than the window)
    model.step(tokens[:3], StepBatch.single(3, start=0, slot=1), cache)
    out = model.step(tokens[3:prompt], StepBatch.single(prompt - 3, start=3, slot=1), cache)
    assert torch.allclose(out, full[3:prompt], rtol=1e-4, atol=1e-4)
    worst = 0.0
    for pos in range(prompt, 330):
        step = model.step(tokens[pos : pos + 1], StepBatch.single(1, start=pos, slot=1), cache)
        worst = max(worst, float((step[0] - full[pos]).abs().max() / full[pos].abs().max()))
    assert worst < 1e-4, worst


def test_mixed_batch_of_prefills_and_decodes_equals_each_alone(model):
    gen = torch.Generator().manual_seed(2)
    seqs = [torch.randint(0, 199998, (n,), generator=gen) for n in (1, 7, 40, 130)]
    cache = KVCache(model.config, num_slots=4, max_len=200)
    # sequences 0 and 2 already have part of their tokens cached; 1 and 3 start from scratch
    model.step(seqs[2][:25], StepBatch.single(25, slot=2), cache)
    starts, lens = [0, 0, 25, 0], [1, 7, 15, 130]
    flat = torch.cat([s[a : a + n] for s, a, n in zip(seqs, starts, lens)])
    batch = StepBatch.of([0, 1, 2, 3], starts, lens)
    logits = model.step(flat, batch, cache, logits_index=batch.last_index)
    for i, s in enumerate(seqs):
        alone = model(s)[-1]
        assert torch.allclose(logits[i], alone, rtol=1e-4, atol=1e-4), i


def test_greedy_generation_follows_the_full_forward_argmax(model):
    llm = LLM(model, max_batch=2, max_model_len=512)
    prompt = list(range(500, 530))
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=300, logprobs=3))[0]
    assert len(out.token_ids) == 300 and out.finish_reason == "length"
    full = model(torch.tensor(prompt + out.token_ids))
    assert full[len(prompt) - 1 : -1].argmax(-1).tolist() == out.token_ids
    lp = torch.log_softmax(full[len(prompt) - 1 : -1], dim=-1)
    for i, (token, rec) in enumerate(zip(out.token_ids, out.logprobs)):
        assert rec.token == token
        assert abs(rec.logprob - float(lp[i, token])) < 1e-3
        assert [t for t, _ in rec.top] == lp[i].topk(3).indices.tolist()


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0, max_tokens=25),
        SamplingParams(temperature=0.9, top_p=0.8, max_tokens=25, seed=123),
        SamplingParams(temperature=1.3, top_k=50, max_tokens=25, seed=7),
    ],
)
def test_batched_generation_equals_generating_each_alone(model, params):
    llm = LLM(model, max_batch=4, max_model_len=256)
    prompts = [list(range(100, 100 + n)) for n in (3, 17, 60, 140)]
    together = llm.generate(prompts, params)
    alone = [llm.generate([p], params)[0] for p in prompts]
    assert [o.token_ids for o in together] == [o.token_ids for o in alone]


def test_more_requests_than_slots_all_finish(model):
    llm = LLM(model, max_batch=2, max_model_len=128)
    outs = llm.generate([[i + 1] * (i + 2) for i in range(5)], SamplingParams(temperature=0, max_tokens=5))
    assert [len(o.token_ids) for o in outs] == [5] * 5
    assert llm.engine.scheduler.free_slots and len(llm.engine.scheduler.free_slots) == 2


def test_seeds_reproduce_and_differ(model):
    llm = LLM(model, max_batch=2, max_model_len=128)
    p = [1, 2, 3]
    a = llm.generate([p], SamplingParams(max_tokens=20, seed=1))[0].token_ids
    b = llm.generate([p], SamplingParams(max_tokens=20, seed=1))[0].token_ids
    c = llm.generate([p], SamplingParams(max_tokens=20, seed=2))[0].token_ids
    assert a == b and a != c


def test_top_k_one_is_greedy_and_stop_tokens_end_generation(model):
    llm = LLM(model, max_batch=2, max_model_len=128)
    greedy = llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=12))[0]
    topk1 = llm.generate([[5, 6, 7]], SamplingParams(temperature=2.0, top_k=1, max_tokens=12, seed=9))[0]
    assert greedy.token_ids == topk1.token_ids
    stop = greedy.token_ids[4]
    first = greedy.token_ids.index(stop)
    stopped = llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[stop]))[0]
    assert stopped.token_ids == greedy.token_ids[: first + 1] and stopped.finish_reason == "stop"


def test_context_limit_and_bad_requests(model):
    engine = LLMEngine(model, max_batch=1, max_model_len=32)
    with pytest.raises(GptossError, match="prompt has 32 tokens; the context holds 32"):
        engine.add_request(list(range(32)), SamplingParams())
    with pytest.raises(GptossError, match="prompt is empty"):
        engine.add_request([], SamplingParams())
    with pytest.raises(GptossError, match="prompt token 201088 is outside the vocabulary"):
        engine.add_request([1, 201088], SamplingParams())
    with pytest.raises(GptossError, match="'top_p': expected a number in \\(0, 1\\]"):
        SamplingParams(top_p=0)
    llm = LLM(model, max_batch=1, max_model_len=32)
    out = llm.generate([list(range(1, 29))], SamplingParams(temperature=0, max_tokens=100))[0]
    assert len(out.token_ids) == 4 and out.finish_reason == "length"


def test_stream_yields_tokens_and_closing_frees_the_slot(model, tokenizer):
    llm = LLM(model, max_batch=1, max_model_len=128, tokenizer=tokenizer)
    params = SamplingParams(temperature=0, max_tokens=10)
    whole = llm.generate(["Hello there"], params)[0]
    events = list(llm.stream("Hello there", params))
    assert [e.token for e in events] == whole.token_ids
    assert "".join(e.text for e in events) == tokenizer.decode(whole.token_ids)
    assert events[-1].finish_reason == "length" and all(e.finish_reason is None for e in events[:-1])
    it = llm.stream("Hello there", params)
    next(it)
    it.close()  # a consumer that stops early (Ctrl-C, disconnect) releases its slot
    assert llm.engine.scheduler.free_slots == [0] and not llm.engine.has_work


def test_logits_processor_constrains_sampling(model):
    llm = LLM(model, max_batch=1, max_model_len=128)
    forced = [200005, 17360, 200008, 13225]  # a processor may force any sequence, special tokens included

    def force(output_ids, logits):
        out = torch.full_like(logits, float("-inf"))
        out[forced[len(output_ids) % len(forced)]] = 0.0
        return out

    res = llm.generate(
        [[1, 2, 3]], SamplingParams(temperature=1.0, seed=0, max_tokens=6, logprobs=0, logits_processors=[force])
    )[0]
    assert res.token_ids == forced + forced[:2]
    assert all(lp.logprob <= 0 for lp in res.logprobs)  # log-probabilities stay the model's own


def test_logit_bias_is_added_per_request_in_one_batch(model):
    """+100 forces a token on the one request that asks for it; -100 bans one; a neighbour in the same
    batch samples as it would alone."""
    llm = LLM(model, max_batch=3, max_model_len=128)
    alone = llm.generate([[1, 2, 3]], SamplingParams(temperature=1.0, seed=7, max_tokens=5))[0].token_ids
    forced, banned = (
        SamplingParams(temperature=1.0, seed=1, max_tokens=5, logit_bias={4242: 100.0}),
        SamplingParams(temperature=0, max_tokens=5, logit_bias={alone[0]: -100.0}),
    )
    out = llm.generate([[1, 2, 3]] * 3, [forced, SamplingParams(temperature=1.0, seed=7, max_tokens=5), banned])
    assert out[0].token_ids == [4242] * 5
    assert out[1].token_ids == alone
    assert alone[0] not in out[2].token_ids[:1]
    for bad, words in [({-1: 1.0}, "token ids"), ({5: 100.5}, r"\[-100, 100\]"), ({i: 1.0 for i in range(301)}, "300")]:
        with pytest.raises(GptossError, match=words):
            SamplingParams(logit_bias=bad)


def test_shared_prefix_reuses_the_kv_cache_and_changes_nothing(model):
    cold = LLM(model, max_batch=2, max_model_len=256, prefix_caching=False)
    warm = LLM(model, max_batch=2, max_model_len=256)
    prefix = list(range(300, 340))  # 40 tokens: longer than tiny's 16-token window
    prompts = [prefix + [7, 8, 9], prefix + [10, 11], prefix + [12] * 30]
    params = SamplingParams(temperature=0, max_tokens=12, logprobs=0)
    plain = [cold.generate([p], params)[0] for p in prompts]
    outs = [warm.generate([p], params)[0] for p in prompts]
    assert warm.engine.prefix_hits == 2 and cold.engine.prefix_hits == 0
    for a, b in zip(plain, outs):
        assert a.token_ids == b.token_ids
        assert max(abs(x.logprob - y.logprob) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4
