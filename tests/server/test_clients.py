"""Real client software against a live server: the OpenAI Agents SDK (over Chat Completions and over
Responses), the openai SDK's parse / stream helpers, and every object the server echoes read back through
the SDK's own types.

Weights are random, so turns end only where the grammar bounds them: a forced call with enum / boolean /
bounded arguments, or an answer held to a small JSON schema; a reasoning budget ends each analysis message.
One server serves the module.
"""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import httpx
import jsonschema
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel, ConfigDict, TypeAdapter

from gptoss.conversation.openai_chat import ServerPersona
from tests.server.conftest import WEATHER_SCHEMA, serve

MODEL = "gpt-oss"
PERSONA = ServerPersona(reasoning_max_tokens=6)
CITIES = ("Paris", "Tokyo", "Lima")
STRICT_WEATHER = WEATHER_SCHEMA | {"required": ["city", "days", "metric"]}  # what OpenAI's strict mode accepts
CHAT_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": STRICT_WEATHER,
        "strict": True,
    },
}
RESP_WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": STRICT_WEATHER,
    "strict": True,
}


class Mood(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mood: Literal["happy", "sad"]
    sure: bool


class GetWeather(BaseModel):
    """Current weather in a city."""

    model_config = ConfigDict(extra="forbid")
    city: Literal["Paris", "Tokyo", "Lima"]
    metric: bool


@pytest.fixture(scope="module")
def server(tiny_llm):
    with serve(tiny_llm(max_batch=8), persona=PERSONA) as base:
        yield base


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


def dump(obj) -> dict:
    return obj.model_dump(mode="json", by_alias=True, exclude_none=True)


def assert_round_trips(sdk_type, raw: dict) -> None:
    """``raw`` (JSON the server sent) validates as ``sdk_type`` and dumps back to itself: no field the SDK
    does not know, none under a Python name (``schema_``), none lost."""
    parsed = TypeAdapter(sdk_type).validate_python(raw)
    assert dump(parsed) == _without_none(raw)


def _without_none(value):
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def _without_parsed(value):
    if isinstance(value, dict):
        return {k: _without_parsed(v) for k, v in value.items() if k != "parsed_arguments"}
    if isinstance(value, list):
        return [_without_parsed(v) for v in value]
    return value


def sse(text: str) -> list[dict]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ") and line != "data: [DONE]"]


# ---------------------------------------------------------------------------------------------- the Agents SDK
def _agents_model(server, api: str):
    from agents import OpenAIChatCompletionsModel, OpenAIResponsesModel, set_tracing_disabled

    set_tracing_disabled(True)  # no trace export (it would go to api.openai.com)
    client = AsyncOpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    if api == "chat":
        return OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
    return OpenAIResponsesModel(model=MODEL, openai_client=client)


def _weather_agent(server, api: str, calls: list):
    from agents import Agent, ModelSettings, function_tool

    @function_tool
    def get_weather(city: Literal["Paris", "Tokyo", "Lima"], metric: bool) -> str:
        """Current weather in a city."""
        calls.append((city, metric))
        return f"sunny in {city}"

    return Agent(
        name="weather",
        instructions="Answer with the weather tool.",
        tools=[get_weather],
        model=_agents_model(server, api),
        tool_use_behavior="stop_on_first_tool",
        model_settings=ModelSettings(tool_choice="get_weather", max_tokens=80, extra_body={"seed": 3}),
    )


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_agents_runner_calls_a_forced_function_tool(server, api):
    from agents import Runner

    calls: list = []
    result = asyncio.run(Runner.run(_weather_agent(server, api, calls), "Weather in Lima?", max_turns=2))
    assert len(calls) == 1 and calls[0][0] in CITIES and isinstance(calls[0][1], bool)
    assert result.final_output == f"sunny in {calls[0][0]}"


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_agents_run_streamed_calls_a_forced_function_tool(server, api):
    from agents import Runner

    calls: list = []

    async def go():
        run = Runner.run_streamed(_weather_agent(server, api, calls), "Weather in Tokyo?", max_turns=2)
        kinds = [ev.item.type async for ev in run.stream_events() if ev.type == "run_item_stream_event"]
        return run, kinds

    run, kinds = asyncio.run(go())
    assert "tool_call_item" in kinds and "tool_call_output_item" in kinds
    assert len(calls) == 1 and run.final_output == f"sunny in {calls[0][0]}"


@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
def test_agents_output_type_with_tools_declared(server, api, streamed):
    """A Pydantic output_type (a strict json_schema response format) while function tools are declared:
    the answer is the JSON alone, no preamble before it."""
    from agents import Agent, ModelSettings, Runner

    calls: list = []
    tool = _weather_agent(server, api, calls).tools[0]
    agent = Agent(
        name="mood",
        instructions="Say how you feel.",
        tools=[tool],
        output_type=Mood,
        model=_agents_model(server, api),
        model_settings=ModelSettings(tool_choice="none", max_tokens=80, extra_body={"seed": 4}),
    )

    async def go():
        if not streamed:
            return await Runner.run(agent, "How do you feel?", max_turns=1)
        run = Runner.run_streamed(agent, "How do you feel?", max_turns=1)
        async for _ in run.stream_events():
            pass
        return run

    result = asyncio.run(go())
    assert isinstance(result.final_output, Mood) and not calls


# ---------------------------------------------------------------------------------------------- openai SDK helpers
def test_chat_completions_parse_with_tools_declared(client):
    """parse() reads content as the response format and tool arguments as the (strict) tool's model:
    whichever way each seed goes, both must parse."""
    outcomes = set()
    for seed in range(2):
        r = client.chat.completions.parse(
            model=MODEL,
            messages=[{"role": "user", "content": "How are you, and how is Paris?"}],
            seed=seed,
            response_format=Mood,
            tools=[openai.pydantic_function_tool(GetWeather)],
            max_tokens=80,
        )
        msg = r.choices[0].message
        if r.choices[0].finish_reason == "tool_calls":
            assert isinstance(msg.tool_calls[0].function.parsed_arguments, GetWeather) and msg.parsed is None
            outcomes.add("call")
        else:
            assert r.choices[0].finish_reason == "stop" and isinstance(msg.parsed, Mood), msg
            assert Mood.model_validate_json(msg.content) == msg.parsed  # the content is the JSON alone
            outcomes.add("answer")
    assert outcomes


def test_responses_parse_with_tools_declared(client):
    r = client.responses.parse(
        model=MODEL,
        input="How do you feel?",
        text_format=Mood,
        tools=[RESP_WEATHER],
        tool_choice="none",
        max_output_tokens=80,
        extra_body={"seed": 2},
    )
    assert r.status == "completed" and isinstance(r.output_parsed, Mood)
    assert [o.type for o in r.output if o.type == "message"] == ["message"]  # no preamble message to misparse
    assert r.text.format.type == "json_schema" and r.text.format.schema_["properties"]["mood"]["enum"] == [
        "happy",
        "sad",
    ]


def test_stored_response_replays_as_a_stream(client):
    # (the helper parses the arguments of the tools it was given: parsed_arguments is the client's, not the wire's)
    with client.responses.stream(
        model=MODEL,
        input="Weather?",
        tools=[RESP_WEATHER],
        tool_choice="required",
        max_output_tokens=80,
        extra_body={"seed": 6},
    ) as stream:
        original = [_without_parsed(dump(ev)) for ev in stream]
    rid = original[-1]["response"]["id"]
    assert original[-1]["type"] == "response.completed"
    with client.responses.stream(response_id=rid) as stream:
        replayed = [dump(ev) for ev in stream]
        final = stream.get_final_response()
    assert replayed == original and final.id == rid and final.output[-1].type == "function_call"
    after = original[3]["sequence_number"]
    with client.responses.stream(response_id=rid, starting_after=after) as stream:
        tail = [dump(ev) for ev in stream]
    assert tail == original[4:] and tail[0]["sequence_number"] == after + 1
    with pytest.raises(openai.BadRequestError, match="starting_after: expected a sequence number"):
        client.responses.retrieve(rid, stream=True, starting_after=len(original))


def test_input_items_list(client):
    first = client.responses.create(
        model=MODEL,
        input=[{"role": "user", "content": "Weather in Lima?"}],
        tools=[RESP_WEATHER],
        tool_choice="required",
        max_output_tokens=80,
        extra_body={"seed": 7},
    )
    call = first.output[-1]
    second = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        tools=[RESP_WEATHER],
        max_output_tokens=2,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )
    items = list(client.responses.input_items.list(second.id, order="asc"))
    # the whole context the model saw: the first input, the first output, then the new input
    assert [i.type for i in items] == ["message"] + [o.type for o in first.output] + ["function_call_output"]
    assert items[0].content[0].text == "Weather in Lima?" and items[-1].call_id == call.call_id
    assert items[1 + len(first.output) - 1].id == call.id
    page = client.responses.input_items.list(second.id, limit=1)  # newest first by default
    assert [i.id for i in page.data] == [items[-1].id] and page.has_more
    nxt = client.responses.input_items.list(second.id, limit=1, after=page.data[0].id)
    assert nxt.data[0].id == items[-2].id
    raw = httpx.get(f"{client.base_url}responses/{second.id}/input_items").json()
    from openai.types.responses import ResponseItem

    for item in raw["data"]:
        TypeAdapter(ResponseItem).validate_python(item)
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list("resp_missing")


# ---------------------------------------------------------------------------------------------- echoed objects
def test_every_echoed_object_round_trips_through_the_sdk(server):
    from openai.types.chat import ChatCompletion, ChatCompletionChunk
    from openai.types.responses import Response, ResponseStreamEvent

    text = {
        "format": {
            "type": "json_schema",
            "name": "mood",
            "schema": Mood.model_json_schema() | {"additionalProperties": False},
            "strict": True,
        }
    }
    body = {
        "model": MODEL,
        "input": "Feelings?",
        "text": text,
        "max_output_tokens": 60,
        "seed": 1,
        "tools": [RESP_WEATHER],
        "parallel_tool_calls": True,
    }
    posted = httpx.post(server + "/v1/responses", json=body, timeout=120).json()
    assert posted["text"]["format"]["schema"]["properties"]["mood"] and "schema_" not in json.dumps(posted)
    assert posted["parallel_tool_calls"] is True and posted["tools"][0]["strict"] is True
    assert_round_trips(Response, posted)
    got = httpx.get(f"{server}/v1/responses/{posted['id']}").json()
    assert got == posted
    streamed = httpx.post(server + "/v1/responses", json=body | {"stream": True}, timeout=120).text
    events = sse(streamed)
    assert events and events[-1]["response"]["text"]["format"]["schema"]
    for ev in events:
        assert_round_trips(ResponseStreamEvent, ev)
    replay = sse(httpx.get(f"{server}/v1/responses/{events[-1]['response']['id']}?stream=true").text)
    assert replay == events

    chat = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 60,
        "seed": 2,
        "tools": [CHAT_WEATHER],
        "tool_choice": "required",
    }
    raw = httpx.post(server + "/v1/chat/completions", json=chat, timeout=120).json()
    message = raw["choices"][0]["message"]
    assert raw["choices"][0]["finish_reason"] == "tool_calls" and message["tool_calls"]
    assert "content" in message and message["content"] is None  # as OpenAI sends a tool-call message
    assert_round_trips(ChatCompletion, raw)
    for chunk in sse(httpx.post(server + "/v1/chat/completions", json=chat | {"stream": True}, timeout=120).text):
        assert_round_trips(ChatCompletionChunk, chunk)


def test_tools_echo_as_sent(client):
    loose = {"type": "function", "name": "note", "parameters": {"type": "object", "properties": {}}}
    r = client.responses.create(
        model=MODEL,
        input="Hi",
        max_output_tokens=1,
        parallel_tool_calls=False,
        tools=[RESP_WEATHER | {"strict": False}, loose],
    )
    assert r.tools[0].strict is False and r.tools[1].strict is None and r.parallel_tool_calls is False
    assert client.responses.create(model=MODEL, input="Hi", max_output_tokens=1).parallel_tool_calls is True


# ---------------------------------------------------------------------------------------------- strict schemas
LOOSE = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
PARTIAL = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
    "additionalProperties": False,
}
NESTED = {
    "type": "object",
    "properties": {"where": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    "required": ["where"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "schema, message",
    [
        (LOOSE, r"at \(root\), 'additionalProperties' is required to be supplied and to be false"),
        (
            PARTIAL,
            r"at \(root\), 'required' is required to be supplied and to be an array including every key in properties; "
            r"missing 'days'",
        ),
        (NESTED, r"at properties.where, 'additionalProperties' is required"),
    ],
)
def test_strict_schemas_openai_rejects_are_400(client, schema, message):
    chat_tool = {"type": "function", "function": {"name": "f", "parameters": schema, "strict": True}}
    with pytest.raises(
        openai.BadRequestError,
        match=r"tools\[0\]\.function\.parameters: invalid schema for strict "
        r"function 'f': " + message,
    ) as err:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], tools=[chat_tool])
    assert err.value.body["param"] == "tools[0].function.parameters"
    with pytest.raises(
        openai.BadRequestError,
        match=r"tools\[0\]\.parameters: invalid schema for strict function "
        r"'f': " + message,
    ):
        client.responses.create(
            model=MODEL, input="x", tools=[{"type": "function", "name": "f", "parameters": schema, "strict": True}]
        )
    with pytest.raises(openai.BadRequestError, match="invalid schema for strict response format 'r'"):
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema, "strict": True}},
        )
    # the same schema without strict is accepted (and held closed by the grammar)
    client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "x"}],
        max_tokens=1,
        tools=[{"type": "function", "function": {"name": "f", "parameters": schema}}],
    )


def test_loose_schema_arguments_hold_to_declared_properties(client):
    """additionalProperties unspecified: the call carries only declared keys; integers stay within 64 bits."""
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}},
        "required": ["n", "ok"],
    }
    tool = {"type": "function", "function": {"name": "count", "parameters": schema}}
    for seed in range(2):
        r = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Count"}],
            seed=seed,
            tools=[tool],
            tool_choice="required",
            max_tokens=80,
        )
        assert r.choices[0].finish_reason == "tool_calls"
        args = json.loads(r.choices[0].message.tool_calls[0].function.arguments)
        assert set(args) == {"n", "ok"} and -(2**63) <= args["n"] < 2**63


# ---------------------------------------------------------------------------------------------- Codex's tool list
def test_namespace_and_web_search_tools_without_a_browser(client):
    """Codex declares web_search and MCP tools in a namespace: the namespace's functions run (the call names
    its namespace), web_search without a browser is left out (the model answers without searching)."""
    crm = {
        "type": "namespace",
        "name": "crm",
        "description": "Customer records",
        "tools": [
            {
                "type": "function",
                "name": "lookup",
                "description": "Find a customer",
                "parameters": STRICT_WEATHER,
                "strict": True,
            }
        ],
    }
    r = client.responses.create(
        model=MODEL,
        input="Find Lima",
        tools=[{"type": "web_search"}, crm, RESP_WEATHER],
        tool_choice={"type": "function", "name": "lookup", "namespace": "crm"},
        max_output_tokens=80,
        extra_body={"seed": 3},
    )
    call = r.output[-1]
    assert r.status == "completed" and call.type == "function_call"
    assert (call.namespace, call.name) == ("crm", "lookup")
    jsonschema.validate(json.loads(call.arguments), WEATHER_SCHEMA)
    assert [t.type for t in r.tools] == ["web_search", "namespace", "function"] and r.tools[1].tools[0].name == "lookup"
    # the call goes back as input with its namespace, and the conversation continues
    again = client.responses.create(
        model=MODEL,
        tools=[crm],
        max_output_tokens=2,
        input=[
            {"role": "user", "content": "Find Lima"},
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "found"},
        ],
    )
    assert again.status in ("completed", "incomplete")
    with pytest.raises(openai.BadRequestError, match=r"tools\[0\]\.type: this server has no browser tool"):
        client.responses.create(
            model=MODEL, input="x", tools=[{"type": "web_search"}], tool_choice={"type": "web_search"}
        )
    with pytest.raises(openai.BadRequestError, match=r"tools\[0\]\.tools\[0\]: only named function tools"):
        client.responses.create(
            model=MODEL,
            input="x",
            tools=[{"type": "namespace", "name": "n", "description": "", "tools": [{"type": "custom", "name": "c"}]}],
        )
    with pytest.raises(openai.BadRequestError, match=r"tools\[0\]\.type: 'custom' tools are not supported"):
        client.responses.create(model=MODEL, input="x", tools=[{"type": "custom", "name": "apply_patch"}])


# ---------------------------------------------------------------------------------------------- truncated calls
def test_a_call_cut_by_max_tokens_is_never_reported_complete(client, server):
    """Seeded requests repeat their tokens, so a forced call that takes T tokens is cut at T - 1 (all but its
    closing <|call|>: the arguments may even parse) and inside its arguments."""
    chat = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Weather?"}],
        "seed": 1,
        "tools": [CHAT_WEATHER],
        "tool_choice": "required",
    }
    whole = client.chat.completions.create(**chat, max_tokens=80)
    assert whole.choices[0].finish_reason == "tool_calls"
    jsonschema.validate(json.loads(whole.choices[0].message.tool_calls[0].function.arguments), STRICT_WEATHER)
    used = whole.usage.completion_tokens
    for limit in (used - 1, used - 4):
        cut = client.chat.completions.create(**chat, max_tokens=limit)
        assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == limit
        args = cut.choices[0].message.tool_calls[0].function.arguments
        assert whole.choices[0].message.tool_calls[0].function.arguments.startswith(args)

    body = {
        "model": MODEL,
        "input": "Weather?",
        "tools": [RESP_WEATHER],
        "tool_choice": "required",
        "seed": 1,
        "stream": True,
    }
    events = sse(httpx.post(server + "/v1/responses", json=body | {"max_output_tokens": 80}, timeout=120).text)
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["output"][-1]["status"] == "completed"
    assert [e for e in events if e["type"] == "response.function_call_arguments.done"]
    used = final["usage"]["output_tokens"]
    events = sse(httpx.post(server + "/v1/responses", json=body | {"max_output_tokens": used - 1}, timeout=120).text)
    final = events[-1]["response"]
    assert events[-1]["type"] == "response.incomplete" and final["incomplete_details"]["reason"] == "max_output_tokens"
    assert final["output"][-1]["type"] == "function_call" and final["output"][-1]["status"] == "incomplete"
    assert not [e for e in events if e["type"] == "response.function_call_arguments.done"]
    done = [e for e in events if e["type"] == "response.output_item.done"]
    assert done[-1]["item"]["status"] == "incomplete"


# ---------------------------------------------------------------------------------------------- the rest of the API
def test_ignored_parameters_are_accepted(server):
    chat = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 1,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.5,
        "logit_bias": {"1": 5},
        "user": "u",
        "store": True,
        "metadata": {"a": "b"},
        "service_tier": "auto",
        "prediction": {"type": "content", "content": "x"},
        "modalities": ["text"],
        "audio": None,
        "web_search_options": {},
        "parallel_tool_calls": False,
    }
    r = httpx.post(server + "/v1/chat/completions", json=chat, timeout=60)
    assert r.status_code == 200, r.text
    resp = {
        "model": MODEL,
        "input": "Hi",
        "max_output_tokens": 1,
        "background": False,
        "include": [],
        "truncation": "disabled",
        "prompt_cache_key": "k",
        "service_tier": "auto",
        "top_logprobs": 0,
        "user": "u",
        "safety_identifier": "s",
        "reasoning": {"effort": "low", "summary": "auto"},
    }
    r = httpx.post(server + "/v1/responses", json=resp, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["output"] == [] or all(o.get("summary", []) == [] for o in r.json()["output"])


@pytest.mark.parametrize(
    "method, path",
    [("POST", "/v1/embeddings"), ("POST", "/v1/responses/resp_1/cancel"), ("POST", "/v1/images/generations")],
)
def test_other_endpoints_are_404(server, method, path):
    r = httpx.request(method, server + path, json={"model": MODEL})
    assert r.status_code == 404 and r.json()["error"]["message"] == f"no route {method} {path}"


def test_every_compatibility_row_names_a_test():
    import ast
    import pathlib
    import re

    here = pathlib.Path(__file__).parent
    doc = (here.parents[1] / "docs" / "compatibility.md").read_text().split("## Tried by hand")[0]
    rows = [
        line
        for line in doc.splitlines()
        if line.startswith("| ") and not line.startswith(("| Endpoint ", "| Parameter ", "| Client "))
    ]
    named = [re.search(r"`(test_\w+\.py)::(test_\w+)`", row) for row in rows]
    assert len(rows) > 30 and all(named), [r for r, m in zip(rows, named) if not m]
    for m in named:
        tree = ast.parse((here / m.group(1)).read_text())
        assert m.group(2) in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, m.group(0)
