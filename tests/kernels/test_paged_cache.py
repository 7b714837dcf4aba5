"""The paged KV cache and its block manager (plain torch: these run with or without Triton).

The model over blocks of 4 equals the model over blocks of 16, step by step; the engine generates the same
tokens with and without prefix caching, also when a small pool forces preemption."""

import pytest
import torch

from gptoss.engine import LLM, SamplingParams
from gptoss.model import KVCache, StepBatch
from gptoss.model.paged_cache import FULL, SLIDING, BlockAllocator, NoFreeBlocks, PagedKVCache
from tests.helpers import tiny_model

# Hundreds of single-token decode steps of a tiny model: one thread (see the fixture).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=4)  # window 16


def test_block_allocator_counts_references_and_never_hands_out_the_null_block():
    a = BlockAllocator(4)
    got = [a.allocate() for _ in range(3)]
    assert sorted(got) == [1, 2, 3] and a.num_free == 0
    with pytest.raises(NoFreeBlocks, match="KV-cache blocks are in use"):
        a.allocate()
    a.share(got[0])
    a.release(got[0])
    assert a.num_free == 0  # still referenced once
    a.release(got[0])
    a.release(0)  # the null block: ignored
    assert a.num_free == 1 and a.allocate() == got[0]


def test_banded_layers_hold_only_their_window(model):
    cache = PagedKVCache(model.config, num_slots=2, max_len=400, block_size=4)
    tokens = torch.randint(0, 1000, (300,), generator=torch.Generator().manual_seed(0))
    model.step(tokens[:50], StepBatch.single(50, slot=1), cache)
    for pos in range(50, 300):
        model.step(tokens[pos : pos + 1], StepBatch.single(1, start=pos, slot=1), cache)
        live = [b for b in cache.tables[SLIDING][1] if b]
        assert len(live) <= -(-(16 - 1) // 4) + 1  # window 16 over blocks of 4
    assert len([b for b in cache.tables[FULL][1] if b]) == 300 // 4
    used = {g: a.num_blocks - 1 - a.num_free for g, a in cache.allocators.items()}
    assert used == {FULL: 75, SLIDING: 4}
    cache.free(1)
    assert all(a.num_free == a.num_blocks - 1 for a in cache.allocators.values())


def test_decode_over_small_blocks_equals_over_large_blocks(model):
    tokens = torch.randint(0, 199998, (330,), generator=torch.Generator().manual_seed(1))
    slot = KVCache(model.config, num_slots=2, max_len=400)  # blocks of 16
    paged = PagedKVCache(model.config, num_slots=2, max_len=400, block_size=4)
    for cache in (slot, paged):  # prompt in two chunks, one longer than the window
        model.step(tokens[:3], StepBatch.single(3, slot=1), cache)
    a = model.step(tokens[3:20], StepBatch.single(17, start=3, slot=1), slot)
    b = model.step(tokens[3:20], StepBatch.single(17, start=3, slot=1), paged)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    worst = 0.0
    for pos in range(20, 330):
        a = model.step(tokens[pos : pos + 1], StepBatch.single(1, start=pos, slot=1), slot)
        b = model.step(tokens[pos : pos + 1], StepBatch.single(1, start=pos, slot=1), paged)
        worst = max(worst, float((a - b).abs().max() / a.abs().max()))
    assert worst < 1e-5, worst


def test_mixed_batch_over_paged_cache_equals_each_alone(model):
    gen = torch.Generator().manual_seed(2)
    seqs = [torch.randint(0, 199998, (n,), generator=gen) for n in (1, 7, 40, 130)]
    cache = PagedKVCache(model.config, num_slots=4, max_len=200, block_size=8)
    model.step(seqs[2][:25], StepBatch.single(25, slot=2), cache)
    starts, lens = [0, 0, 25, 0], [1, 7, 15, 130]
    flat = torch.cat([s[a : a + n] for s, a, n in zip(seqs, starts, lens)])
    batch = StepBatch.of([0, 1, 2, 3], starts, lens)
    logits = model.step(flat, batch, cache, logits_index=batch.last_index)
    for i, s in enumerate(seqs):
        assert torch.allclose(logits[i], model(s)[-1], rtol=1e-4, atol=1e-4), i


def test_copy_slot_shares_whole_blocks_and_copies_the_last(model):
    tokens = torch.randint(0, 199998, (60,), generator=torch.Generator().manual_seed(3))
    full = model(tokens)
    cache = PagedKVCache(model.config, num_slots=3, max_len=100, block_size=8)
    model.step(tokens[:30], StepBatch.single(30, slot=0), cache)
    cache.copy_slot(0, 2, 30)
    shared = [b for b in cache.tables[FULL][0][:3]]
    assert cache.tables[FULL][2][:3] == shared and all(cache.allocators[FULL].refs[b] == 2 for b in shared)
    assert cache.tables[FULL][2][3] != cache.tables[FULL][0][3]  # the partly filled block is a copy
    # both continue differently from the shared prefix; each stays equal to its own full forward
    other = torch.cat([tokens[:30], tokens[30:].flip(0)])
    for pos in range(30, 60):
        a = model.step(tokens[pos : pos + 1], StepBatch.single(1, start=pos, slot=0), cache)
        b = model.step(other[pos : pos + 1], StepBatch.single(1, start=pos, slot=2), cache)
        assert torch.allclose(a[0], full[pos], rtol=1e-4, atol=1e-4)
        assert torch.allclose(b[0], model(other[: pos + 1])[-1], rtol=1e-4, atol=1e-4)


PROMPTS = [list(range(100, 100 + n)) for n in (3, 17, 60, 140)]


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0, max_tokens=20),
        SamplingParams(temperature=0.9, top_p=0.8, max_tokens=20, seed=123),
    ],
)
def test_engine_generates_the_same_with_and_without_prefix_caching(model, params):
    slot = LLM(model, max_batch=4, max_model_len=256, prefix_caching=False).generate(PROMPTS, params)
    paged_llm = LLM(model, max_batch=4, max_model_len=256, kv_cache="paged")
    paged = paged_llm.generate(PROMPTS, params)
    assert [o.token_ids for o in paged] == [o.token_ids for o in slot]
    assert paged_llm.engine.runner.kind == "paged"
    cache = paged_llm.engine.runner.cache
    assert all(a.num_free == a.num_blocks - 1 for a in cache.allocators.values())  # all blocks came back


def test_small_pool_preempts_and_still_generates_the_same(model):
    params = SamplingParams(temperature=0, max_tokens=30)
    want = LLM(model, max_batch=4, max_model_len=256, prefix_caching=False).generate(PROMPTS, params)
    llm = LLM(model, max_batch=4, max_model_len=256, kv_cache="paged", kv_cache_tokens=300)
    got = llm.generate(PROMPTS, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
    assert llm.engine.scheduler.num_preempted > 0


def test_decode_graph_buffers_pad_and_replay_correctly(model):
    """The CUDA-graph runner's plumbing on the CPU: "replay" recomputes the step from the static buffers
    (what a captured graph reads), so batches padded up to a captured size — padding rows pointed at the
    null block — must still generate exactly what the slot cache does."""
    from types import SimpleNamespace

    from gptoss.engine.cuda_graphs import DecodeGraphs

    class Emulated(DecodeGraphs):
        def capture(self):
            for b in self.sizes:
                out = torch.empty(b, self.model.config.vocab_size)

                def replay(b=b, out=out):
                    out.copy_(self.model.step_paged(self.tokens[:b], self._meta(b), self.cache))

                self.graphs[b], self.outputs[b] = SimpleNamespace(replay=replay), out

    params = [SamplingParams(temperature=0, max_tokens=m) for m in (12, 5, 9)]
    prompts = PROMPTS[:3]
    want = LLM(model, max_batch=4, max_model_len=256).generate(prompts, params)
    llm = LLM(model, max_batch=4, max_model_len=256, kv_cache="paged")
    runner = llm.engine.runner
    runner.graphs = Emulated(model, runner.cache, max_batch=4, sizes=(1, 2, 4))
    runner.graphs.enabled = True
    runner.graphs.capture()
    replays = []
    for b, graph in list(runner.graphs.graphs.items()):
        runner.graphs.graphs[b] = SimpleNamespace(replay=lambda g=graph, b=b: (replays.append(b), g.replay()))
    got = llm.generate(prompts, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
    assert set(replays) == {4, 2, 1}  # 3 sequences padded to 4, then 2, then 1 as they finish
