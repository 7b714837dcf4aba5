"""One request whose processing raises fails alone: the others in its batch go on, token for token as if
it had never been there (an out-of-range seed, say, must not fail the rest of the batch)."""

import asyncio

import pytest

from gptoss.engine import LLMEngine, SamplingParams
from gptoss.engine.async_engine import AsyncEngine, GenerationFailed
from gptoss.errors import GptossError
from tests.helpers import tiny_model

PROMPTS = [list(range(100, 100 + n)) for n in (3, 9, 20)]


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=4)


def params(seed: int) -> SamplingParams:
    return SamplingParams(temperature=0.9, max_tokens=4, seed=seed)


def run_all(engine: LLMEngine, seqs) -> None:
    for _ in range(200):
        if all(s.is_finished for s in seqs):
            return
        engine.step()
    raise AssertionError("the engine did not finish")


@pytest.fixture(scope="module")
def expected(model) -> list[list[int]]:
    """The innocent requests' tokens without the failing one."""
    engine = LLMEngine(model, max_batch=5, max_model_len=64)
    seqs = [engine.add_request(p, params(i)) for i, p in enumerate(PROMPTS)]
    run_all(engine, seqs)
    return [s.output_ids for s in seqs]


def boom(output_ids, logits):
    raise RuntimeError("a broken logits processor")


def bad_seed() -> SamplingParams:
    p = params(0)
    p.seed = 2**64  # past SamplingParams' check, as a client's out-of-range seed used to get
    return p


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda: SamplingParams(max_tokens=4, logits_processors=[boom]), id="processor raises"),
        pytest.param(bad_seed, id="seed out of range"),
    ],
)
def test_a_request_whose_sampling_raises_fails_alone(model, expected, bad):
    engine = LLMEngine(model, max_batch=5, max_model_len=64)
    seqs = [engine.add_request(p, params(i)) for i, p in enumerate(PROMPTS[:2])]
    failing = engine.add_request([7, 8, 9], bad())
    seqs += [engine.add_request(p, params(i + 2)) for i, p in enumerate(PROMPTS[2:])]
    run_all(engine, seqs)
    assert [s.output_ids for s in seqs] == expected
    assert failing.finish_reason == "error" and failing.error is not None and engine.failures == [failing]
    assert len(engine.scheduler.free_slots) == 5  # every slot is back


def test_a_request_whose_forward_pass_raises_fails_alone(model, expected):
    engine = LLMEngine(model, max_batch=5, max_model_len=64)
    seqs = [engine.add_request(p, params(i)) for i, p in enumerate(PROMPTS)]
    failing = engine.add_request([7, 8, 9], params(99))
    run = engine.runner.run

    def poisoned(work):
        if any(seq is failing for seq, _ in work) and len(failing.output_ids) == 2:
            raise RuntimeError("a kernel failed on this request")
        return run(work)

    engine.runner.run = poisoned
    run_all(engine, seqs)
    assert [s.output_ids for s in seqs] == expected
    assert failing.finish_reason == "error" and len(failing.output_ids) == 2


def test_the_async_engine_fails_only_the_bad_request(model, expected):
    engine = AsyncEngine(LLMEngine(model, max_batch=5, max_model_len=64))

    async def collect(p, sp):
        return [e.token async for e in engine.generate(p, sp)]

    async def main():
        tasks = [collect(p, params(i)) for i, p in enumerate(PROMPTS)]
        tasks.insert(2, collect([7, 8, 9], bad_seed()))
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        results = asyncio.run(main())
    finally:
        engine.shutdown()
    bad = results.pop(2)
    assert isinstance(bad, GenerationFailed) and "generation failed" in str(bad)
    assert results == expected


def test_offline_generate_raises_for_a_failed_request(model):
    from gptoss.engine import LLM

    llm = LLM(model, max_batch=2, max_model_len=64)
    with pytest.raises(GptossError, match="failed: RuntimeError: a broken logits processor"):
        llm.generate([[1, 2, 3]], SamplingParams(max_tokens=4, logits_processors=[boom]))
    assert len(llm.engine.scheduler.free_slots) == 2


def test_seed_out_of_signed_64_bit_range_is_refused():
    with pytest.raises(GptossError, match="'seed': expected None or an integer in"):
        SamplingParams(seed=2**64)
    SamplingParams(seed=-(2**63))
    SamplingParams(seed=2**63 - 1)


def test_a_queued_request_gets_engine_stopped_as_it_is(model):
    # When a tensor parallel rank dies the engine hands EngineStopped to every request it holds; the stream
    # must raise it as it is (the server answers 503), not as a plain GptossError (a 400 "bad request").
    from gptoss.engine.async_engine import EngineStopped

    engine = AsyncEngine(LLMEngine(model, max_batch=2, max_model_len=64))

    async def main():
        rid = engine.submit([1, 2, 3], SamplingParams(max_tokens=50, temperature=0))
        loop, queue = engine._queues[rid]
        queue.put_nowait(EngineStopped("the engine stopped: tensor parallel rank 1 exited"))
        return [e async for e in engine.stream(rid)]

    try:
        with pytest.raises(EngineStopped, match="rank 1"):
            asyncio.run(main())
    finally:
        engine.shutdown()
