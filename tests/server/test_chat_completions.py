"""Chat Completions against a live server, driven by the official openai client."""

from __future__ import annotations

import asyncio
import json

import httpx
import jsonschema
import pytest
from openai import AsyncOpenAI, OpenAI

from gptoss.conversation.openai_chat import ServerPersona
from tests.server.conftest import WEATHER_SCHEMA, serve

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": WEATHER_SCHEMA,
    },
}
MODEL = "gpt-oss"


@pytest.fixture(scope="module")
def server(tiny_llm):
    with serve(tiny_llm(max_batch=8), persona=ServerPersona(reasoning_max_tokens=6)) as base:
        yield base


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server + "/v1", api_key="unused")


def ask(client, **kw):
    kw.setdefault("model", MODEL)
    kw.setdefault("messages", [{"role": "user", "content": "Hello"}])
    kw.setdefault("max_tokens", 12)
    return client.chat.completions.create(**kw)


def test_chat_completion_not_streamed(client):
    r = ask(client, seed=1, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    choice = r.choices[0]
    assert r.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert "<|" not in (choice.message.content or "")  # no Harmony markup leaks into content
    assert r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streamed_equals_not_streamed(client):
    whole = ask(client, seed=5, max_tokens=16)
    chunks = list(ask(client, seed=5, max_tokens=16, stream=True, stream_options={"include_usage": True}))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    assert content == (whole.choices[0].message.content or "")
    assert reasoning == (getattr(whole.choices[0].message, "reasoning_content", None) or "")
    # `reasoning` (the name Ollama, vLLM and gpt-oss's own samplers read) carries the same text
    assert "".join(getattr(c.choices[0].delta, "reasoning", None) or "" for c in chunks if c.choices) == reasoning
    assert (getattr(whole.choices[0].message, "reasoning", None) or "") == reasoning
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_tool_choice_required_gives_arguments_that_validate(client, stream):
    schema = WEATHER["function"]["parameters"]
    for seed in range(3):
        kw = dict(seed=seed, tools=[WEATHER], tool_choice="required", max_tokens=80)
        if not stream:
            r = ask(client, **kw)
            choice = r.choices[0]
            assert choice.finish_reason == "tool_calls"
            calls = choice.message.tool_calls
            name, args = calls[0].function.name, calls[0].function.arguments
        else:
            chunks = list(ask(client, stream=True, **kw))
            deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
            assert deltas[0].id.startswith("call_") and deltas[0].function.name
            name = deltas[0].function.name
            args = "".join(d.function.arguments or "" for d in deltas)
            assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
                "tool_calls"
            ]
        assert name == "get_weather"
        jsonschema.validate(json.loads(args), schema)


def test_named_tool_choice_and_tool_none(client):
    other = {
        "type": "function",
        "function": {"name": "noop", "parameters": {"type": "object", "properties": {}, "additionalProperties": False}},
    }
    r = ask(
        client,
        seed=3,
        tools=[WEATHER, other],
        tool_choice={"type": "function", "function": {"name": "noop"}},
        max_tokens=60,
    )
    assert [c.function.name for c in r.choices[0].message.tool_calls] == ["noop"]
    assert json.loads(r.choices[0].message.tool_calls[0].function.arguments) == {}
    r = ask(client, seed=3, tools=[WEATHER], tool_choice="none", max_tokens=10)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason != "tool_calls"


def test_tool_result_round_trip(client, server):
    first = ask(client, seed=2, tools=[WEATHER], tool_choice="required", max_tokens=80)
    call = first.choices[0].message.tool_calls[0]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
    ]
    r = ask(client, seed=2, tools=[WEATHER], messages=messages, max_tokens=10)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    prompt = httpx.post(server + "/tokenize", json={"model": MODEL, "messages": messages, "tools": [WEATHER]}).json()[
        "prompt"
    ]
    # history tool calls render as openai-harmony renders them: the recipient in the role header
    assert (
        f"<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>"
        f"{call.function.arguments}<|call|>"
    ) in prompt
    assert '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"temp_c": 21}<|end|>' in prompt
    assert "namespace functions {" in prompt and "type get_weather = (_: {" in prompt


def test_reasoning_effort_and_instructions_in_the_prompt(server):
    for effort in ("low", "medium", "high"):
        body = {
            "model": MODEL,
            "reasoning_effort": effort,
            "messages": [{"role": "system", "content": "Speak like a pirate."}, {"role": "user", "content": "Hi"}],
        }
        prompt = httpx.post(server + "/tokenize", json=body).json()["prompt"]
        assert f"Reasoning: {effort}" in prompt
        assert "<|start|>developer<|message|># Instructions\n\nSpeak like a pirate.<|end|>" in prompt
        assert prompt.startswith("<|start|>system<|message|>You are ChatGPT") and prompt.endswith("<|start|>assistant")


def test_reasoning_is_separate_from_content(client):
    seen = 0
    for seed in range(6):
        r = ask(client, seed=seed, max_tokens=20)
        m = r.choices[0].message
        reasoning = getattr(m, "reasoning_content", None)
        assert getattr(m, "reasoning", None) == reasoning  # both names, the same text
        if reasoning:
            seen += 1
            assert r.usage.completion_tokens_details.reasoning_tokens > 0
        assert "<|channel|>" not in (m.content or "") and "analysis" not in (m.content or "")[:9]
    assert seen, "with a reasoning budget some random turns must reason first"


@pytest.mark.parametrize("name", ["reasoning_content", "reasoning"])
def test_assistant_reasoning_is_accepted_under_either_name(server, name):
    body = {
        "model": MODEL,
        "messages": [
            {"role": "user", "content": "Weather in Lima?"},
            {
                "role": "assistant",
                name: "The user wants Lima.",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        "tools": [WEATHER],
    }
    prompt = httpx.post(server + "/tokenize", json=body).json()["prompt"]
    assert "<|channel|>analysis<|message|>The user wants Lima.<|end|>" in prompt


def test_json_schema_response_format(client, server):
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}},
        "required": ["ok", "n"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}}
    r = ask(client, seed=4, max_tokens=80, response_format=fmt)
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    prompt = httpx.post(
        server + "/tokenize",
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "response_format": fmt},
    ).json()["prompt"]
    assert "# Response Formats\n\n## verdict\n\n" + json.dumps(schema, separators=(",", ":")) + "<|end|>" in prompt


def test_n_seed_stop_and_logprobs(client):
    r = ask(client, seed=9, n=3, max_tokens=24, logprobs=True, top_logprobs=2)
    assert [c.index for c in r.choices] == [0, 1, 2]
    again = ask(client, seed=9, n=3, max_tokens=24)
    assert [c.message.content for c in r.choices] == [c.message.content for c in again.choices]
    for c in r.choices:
        for lp in c.logprobs.content:
            assert lp.logprob <= 0 and len(lp.top_logprobs) == 2
        assert "".join(lp.token for lp in c.logprobs.content) == (c.message.content or "")
    text = next(c.message.content for c in r.choices if c.message.content and len(c.message.content) > 3)
    seed = next(c.index for c in r.choices if c.message.content == text) + 9
    stop = text[2:4]
    cut = ask(client, seed=seed, max_tokens=24, stop=[stop])
    assert cut.choices[0].message.content == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"


def test_64_concurrent_streams_equal_each_alone(server):
    async def one(client, i):
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Request {i % 8}"}],
            max_tokens=6 + i % 5,
            seed=i,
            stream=True,
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def main():
        client = AsyncOpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=300)
        together = await asyncio.gather(*(one(client, i) for i in range(64)))
        alone = [await one(client, i) for i in range(0, 64, 7)]
        return together, alone

    together, alone = asyncio.run(main())
    assert [together[i] for i in range(0, 64, 7)] == alone


def test_disconnect_frees_the_slot(server, client):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "long"}], "max_tokens": 1500, "stream": True}
    with httpx.stream("POST", server + "/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(4):
            next(lines)
    # the generation was aborted: the running batch empties long before 1500 tokens could be generated
    for _ in range(100):
        health = httpx.get(server + "/health").json()
        if health["running"] == 0:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert health["running"] == 0
    assert ask(client, seed=1, max_tokens=4).choices[0].finish_reason in ("stop", "length")


def test_metrics_and_models(server, client):
    def hits() -> float:
        line = next(
            row
            for row in httpx.get(server + "/metrics").text.splitlines()
            if row.startswith("gptoss_prefix_cache_hits ")
        )
        return float(line.split()[1])

    before = hits()
    for i in range(2):  # the same system and developer messages: the second reuses their KV cache
        ask(
            client,
            seed=i,
            max_tokens=4,
            messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": f"question {i}"}],
        )
    assert hits() >= before + 1
    text = httpx.get(server + "/metrics").text
    for name in (
        "gptoss_queue_depth",
        "gptoss_running_requests",
        "gptoss_generation_tokens_per_second",
        "gptoss_time_to_first_token_seconds_bucket",
        "gptoss_time_per_output_token_seconds_bucket",
    ):
        assert name in text
    assert MODEL in [m.id for m in client.models.list().data]


def test_hidden_reasoning_hides_it_under_both_names(tiny_llm):
    with serve(tiny_llm(max_batch=1), persona=ServerPersona(reasoning_max_tokens=6), reasoning="hidden") as base:
        c = OpenAI(base_url=base + "/v1", api_key="unused")
        reasoned = None
        for seed in range(6):
            r = ask(c, seed=seed, max_tokens=12)
            assert not {"reasoning", "reasoning_content"} & set(r.choices[0].message.model_extra or {})
            if r.usage.completion_tokens_details.reasoning_tokens:
                reasoned = seed
                break
        assert reasoned is not None, "some random turns reason first: there is something to hide"
        chunks = list(ask(c, seed=reasoned, max_tokens=12, stream=True))
        assert not any(
            {"reasoning", "reasoning_content"} & set(ch.choices[0].delta.model_extra or {})
            for ch in chunks
            if ch.choices
        )


def test_logit_bias_of_100_forces_a_token_and_bad_entries_are_a_400(client, server, tokenizer):
    panda = tokenizer.encoding.encode(" panda")
    assert len(panda) == 1
    r = ask(client, seed=3, max_tokens=24, temperature=1.0, logit_bias={str(panda[0]): 100})
    content = r.choices[0].message.content or ""
    assert content and content.replace(" panda", "") == "", content  # the grammar lets it in; the bias forces it
    plain = ask(client, seed=3, max_tokens=24, temperature=1.0)
    assert (plain.choices[0].message.content or "").replace(" panda", "") != ""
    for bias, words in [
        ({"abc": 5}, "'abc' is not a token id"),
        ({"999999999": 5}, "not a token id"),
        ({str(panda[0]): 101}, "should be in [-100, 100], found 101"),
        ({str(i): 1 for i in range(301)}, "at most 300 entries, found 301"),
    ]:
        resp = httpx.post(
            server + "/v1/chat/completions",
            json={"model": MODEL, "max_tokens": 4, "logit_bias": bias, "messages": [{"role": "user", "content": "Hi"}]},
        )
        assert resp.status_code == 400, resp.text
        err = resp.json()["error"]
        assert err["param"] == "logit_bias" and words in err["message"], err
