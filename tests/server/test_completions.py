"""The legacy POST /v1/completions against a live server, driven by the openai SDK: raw text continuation,
echo, prompt and answer log-probabilities in the legacy shape, streaming, and its 400s."""

from __future__ import annotations

import httpx
import openai
import pytest
import torch
from openai import OpenAI

from tests.server.conftest import serve

MODEL = "gpt-oss"


@pytest.fixture(scope="module")
def llm(tiny_llm):
    return tiny_llm(max_batch=4, max_model_len=512)


@pytest.fixture(scope="module")
def server(llm):
    with serve(llm) as base:
        yield base


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


def forward_logprobs(llm, ids: list[int]) -> torch.Tensor:
    """The model's own log-probabilities: one forward pass over the token ids, no cache, no engine."""
    return torch.log_softmax(llm.model(torch.tensor(ids)).float(), dim=-1)


def assert_prompt_logprobs(llm, ids, lp, k):
    ref = forward_logprobs(llm, ids)
    tok = llm.tokenizer
    n = len(ids)
    assert lp.tokens[:n] == [tok.decode([t]) for t in ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing comes before the first token
    want = [float(ref[p - 1, ids[p]]) for p in range(1, n)]
    assert max(abs(a - b) for a, b in zip(lp.token_logprobs[1:n], want)) < 1e-4
    for p in range(1, n):
        top = torch.topk(ref[p - 1], k)
        expect = {tok.decode([t]): float(v) for t, v in zip(top.indices.tolist(), top.values.tolist())}
        expect.setdefault(tok.decode([ids[p]]), want[p - 1])
        got = lp.top_logprobs[p]
        assert set(got) == set(expect) and all(abs(got[t] - expect[t]) < 1e-4 for t in got)


def test_echo_with_logprobs_scores_the_prompt_as_the_model_does(client, llm):
    text = "The quick brown fox jumps over the lazy dog"
    ids = llm.tokenizer.encode(text)
    r = client.completions.create(model=MODEL, prompt=text, max_tokens=0, echo=True, logprobs=3)
    (choice,) = r.choices
    assert r.object == "text_completion" and choice.text == text and choice.finish_reason == "length"
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 0  # raw text: no Harmony around it
    assert_prompt_logprobs(llm, ids, choice.logprobs, 3)
    offsets = choice.logprobs.text_offset
    assert offsets[0] == 0 and [text[a:b] for a, b in zip(offsets, offsets[1:] + [len(text)])] == choice.logprobs.tokens


def test_prompt_logprobs_batched_equal_alone(client, llm):
    gen = torch.Generator().manual_seed(11)
    batch = [torch.randint(0, 199998, (n,), generator=gen).tolist() for n in (5, 30, 90)]
    r = client.completions.create(model=MODEL, prompt=batch, max_tokens=2, echo=True, logprobs=1, temperature=0)
    assert [c.index for c in r.choices] == [0, 1, 2]
    for ids, c in zip(batch, r.choices):
        assert_prompt_logprobs(llm, ids, c.logprobs, 1)
        assert len(c.logprobs.tokens) == len(ids) + len(c.logprobs.tokens[len(ids) :])
        assert c.text.startswith(llm.tokenizer.decode(ids))
    alone = client.completions.create(model=MODEL, prompt=batch[1], max_tokens=2, echo=True, logprobs=1, temperature=0)
    assert alone.choices[0].logprobs.tokens == r.choices[1].logprobs.tokens
    assert (
        max(
            abs(a - b)
            for a, b in zip(alone.choices[0].logprobs.token_logprobs[1:], r.choices[1].logprobs.token_logprobs[1:])
        )
        < 1e-4
    )


def test_greedy_continuation_follows_the_forward_argmax(client, llm):
    ids = llm.tokenizer.encode("Once upon a time")
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=6, temperature=0, logprobs=0)
    (c,) = r.choices
    out = list(ids)
    for _ in range(len(c.logprobs.tokens)):
        out.append(int(forward_logprobs(llm, out)[-1].argmax()))
    generated = out[len(ids) :]
    assert c.logprobs.tokens == [llm.tokenizer.decode([t]) for t in generated]
    assert c.text == llm.tokenizer.decode(generated) and r.usage.completion_tokens == len(generated)
    assert c.finish_reason == "length" and len(generated) == 6 or c.finish_reason == "stop"
    assert c.logprobs.text_offset[0] == 0 and all(len(d) == 1 for d in c.logprobs.top_logprobs)  # the chosen token


def test_stream_equals_whole_and_seeds_reproduce(client):
    kw = dict(model=MODEL, prompt="Hello there", max_tokens=12, n=2, seed=3, logprobs=2, echo=True)
    whole = client.completions.create(**kw)
    assert whole.choices[0].text != whole.choices[1].text  # each choice its own seed
    again = client.completions.create(**kw)
    assert [c.text for c in again.choices] == [c.text for c in whole.choices]
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    for c in whole.choices:
        mine = [ch.choices[0] for ch in chunks if ch.choices and ch.choices[0].index == c.index]
        assert "".join(x.text for x in mine) == c.text
        assert [x.finish_reason for x in mine if x.finish_reason] == [c.finish_reason]
        assert sum((x.logprobs.tokens for x in mine if x.logprobs), []) == c.logprobs.tokens
        assert sum((x.logprobs.text_offset for x in mine if x.logprobs), []) == c.logprobs.text_offset
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_stop_strings_cut_the_text_and_its_logprobs(client):
    base = client.completions.create(model=MODEL, prompt="abc", max_tokens=10, temperature=0, logprobs=0)
    text = base.choices[0].text
    assert len(text) > 3
    stop = text[2:4]
    cut = client.completions.create(model=MODEL, prompt="abc", max_tokens=10, temperature=0, logprobs=0, stop=[stop])
    c = cut.choices[0]
    assert c.text == text[: text.index(stop)] and c.finish_reason == "stop"
    assert all(o < len(c.text) for o in c.logprobs.text_offset) and cut.usage.completion_tokens == len(
        c.logprobs.tokens
    )


def test_max_tokens_beyond_the_context_is_clamped(client):
    r = client.completions.create(model=MODEL, prompt="Hi", max_tokens=131072, temperature=0, stop=["e"])
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.total_tokens <= 512


@pytest.mark.parametrize(
    "body, message",
    [
        ({"suffix": "x"}, "suffix: not supported"),
        ({"best_of": 3}, "best_of: only best_of equal to n (1) is supported"),
        ({"max_tokens": 0}, "max_tokens: 0 is only allowed with echo"),
        ({"logprobs": 6}, "logprobs: Input should be less than or equal to 5"),
        ({"prompt": []}, "prompt: empty"),
        ({"prompt": ""}, "prompt: empty; at least one token is needed"),
        ({"prompt": [[1, 2], [3, 201088]]}, "prompt[1][1]: token id 201088 is outside the vocabulary"),
        ({"prompt": "word " * 600}, "maximum context length is 512 tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop: at most 4 stop sequences"),
    ],
)
def test_bad_requests_are_400(server, body, message):
    r = httpx.post(server + "/v1/completions", json={"model": MODEL, "prompt": "Hi", **body})
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text


def test_hidden_reasoning_servers_refuse_raw_completions(tiny_llm):
    with serve(tiny_llm(max_batch=1, max_model_len=256), reasoning="hidden") as base:
        with pytest.raises(openai.BadRequestError, match="hides the analysis channel"):
            OpenAI(base_url=base + "/v1", api_key="x", max_retries=0).completions.create(model=MODEL, prompt="Hi")


def test_the_guard_checks_raw_completions(tiny_llm, tmp_path):
    from gptoss.guard import GuardSettings
    from gptoss.guard.policy import load_policies
    from tests.guard.fake_guard import FakeGuard

    (tmp_path / "p.md").write_text("---\nname: p\naction: block\n---\n# P\nTRIGGER=FORBIDDEN\nANSWER_LIMIT=24\n")
    fake = FakeGuard().start()
    try:
        s = GuardSettings(
            policies=load_policies([str(tmp_path / "p.md")]),
            base_url=fake.base_url,
            model=fake.model,
            audit_path=str(tmp_path / "audit.sqlite"),
        )
        with serve(tiny_llm(max_batch=1, max_model_len=512), guard=s) as base:  # its own engine
            c = OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
            with pytest.raises(openai.BadRequestError, match="blocked by the server's policy"):
                c.completions.create(model=MODEL, prompt="say FORBIDDEN", max_tokens=2)
            for stream in (False, True):  # a long answer is blocked whole, streamed or not
                kw = dict(model=MODEL, prompt="Hello", max_tokens=60, temperature=0, stream=stream)
                r = c.completions.create(**kw)
                choices = [ch.choices[0] for ch in r if ch.choices] if stream else r.choices
                assert [(x.text, x.finish_reason) for x in choices] == [("", "content_filter")]
            short = c.completions.create(model=MODEL, prompt="Hello", max_tokens=1, temperature=0)
            assert short.choices[0].finish_reason == "length" and len(short.choices[0].text) < 24
    finally:
        fake.stop()


def test_ignored_parameters_are_accepted(client):
    r = client.completions.create(
        model=MODEL,
        prompt="Hi",
        max_tokens=1,
        frequency_penalty=0.5,
        presence_penalty=0.5,
        logit_bias={"15": 1},
        user="u",
        best_of=1,
    )
    assert r.usage.completion_tokens <= 1


def test_a_stream_that_fails_midway_says_so_in_the_stream_and_the_server_goes_on(server, client, llm, monkeypatch):
    import json

    tok = llm.tokenizer
    real, calls = tok.token_bytes, []

    def failing_on_the_second_token(t):
        calls.append(t)
        if len(calls) == 2:
            raise RuntimeError("token bytes unavailable")
        return real(t)

    monkeypatch.setattr(tok, "token_bytes", failing_on_the_second_token)
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 6, "stream": True, "temperature": 0}
    with httpx.stream("POST", server + "/v1/completions", json=body, timeout=60) as r:
        frames = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    monkeypatch.undo()
    assert r.status_code == 200 and len(calls) >= 2
    assert json.loads(frames[-1]) == {
        "error": {"message": "token bytes unavailable", "type": "server_error", "param": None, "code": None}
    }
    assert client.completions.create(model=MODEL, prompt="Hello", max_tokens=2).usage.completion_tokens == 2
