"""The Responses API against a live server on 127.0.0.1, driven by the official openai client.

Weights are random, so free text never ends on its own: such answers stop at max_output_tokens
(status "incomplete"). Turns that must end use grammar-bounded endings: a function call with
tool_choice="required" or a final answer held to a small JSON schema. A reasoning budget
(ServerPersona(reasoning_max_tokens=8)) makes each reasoning message end.
"""

from __future__ import annotations

import json
import threading

import httpx
import jsonschema
import openai
import pytest
from openai import OpenAI

from gptoss.conversation.openai_chat import ConversationError, ServerPersona
from gptoss.conversation.openai_responses import TurnItems, normalize_input, responses_prompt
from gptoss.harmony import Role
from gptoss.server.store import ResponseStore
from tests.server.conftest import WEATHER_SCHEMA, serve

MODEL = "gpt-oss"
SCHEMA = WEATHER_SCHEMA
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city", "parameters": SCHEMA}
PERSONA = ServerPersona(reasoning_max_tokens=8)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from gptoss.model import ModelConfig
    from gptoss.model.synthetic import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("responses") / "tiny", ModelConfig.preset("tiny"), seed=7)


def _llm(checkpoint):
    from gptoss.engine import LLM

    return LLM(checkpoint, device="cpu", dtype="float32", max_batch=4, max_model_len=2048)


@pytest.fixture(scope="module")
def server_config(store_path):
    from gptoss.server.app import ServerConfig

    return ServerConfig(persona=PERSONA, store_path=str(store_path))


@pytest.fixture(scope="module")
def server(checkpoint, server_config):
    with serve(_llm(checkpoint), server_config) as base:
        yield base


@pytest.fixture(scope="module")
def toolbox(tmp_path_factory, server_config):
    """Built-in tools on the module's server: web_search -> a browser over a local corpus, code_interpreter ->
    python (the server reads ServerConfig.toolbox; each response gets fresh tools from these templates)."""
    from gptoss.tools import Toolbox
    from gptoss.tools.browser import BrowserTool, LocalCorpus
    from gptoss.tools.python import PythonTool

    root = tmp_path_factory.mktemp("corpus")
    (root / "harmony.md").write_text("# Harmony\n\nHarmony is the chat format of gpt-oss. It has three channels.\n")
    (root / "koala.txt").write_text("Koalas\n\nKoalas are arboreal marsupials native to Australia.\n")
    corpus = LocalCorpus(root, index_path=root.parent / "index.sqlite", progress=False)
    server_config.toolbox = Toolbox([BrowserTool(corpus), PythonTool(timeout=30)])
    yield server_config.toolbox
    server_config.toolbox = None
    corpus.close()


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return tmp_path_factory.mktemp("store") / "responses.sqlite"


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


def create(client, **kw):
    kw.setdefault("model", MODEL)
    kw.setdefault("input", "Hello")
    kw.setdefault("max_output_tokens", 16)
    seed = kw.pop("seed", None)
    if seed is not None:
        kw["extra_body"] = {"seed": seed}
    return client.responses.create(**kw)


def call_weather(client, **kw):
    """A function call (tool_choice="required" ends the turn with one)."""
    kw.setdefault("max_output_tokens", 160)
    r = create(client, tools=[WEATHER], tool_choice="required", **kw)
    assert r.status == "completed", r.output
    return r


# ---------------------------------------------------------------------------------------------- conversion
def test_items_become_harmony_messages():
    items = normalize_input(
        [
            {"role": "system", "content": "Be brief."},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Weather "}, {"type": "input_text", "text": "in Lima?"}],
            },
            {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "Need the tool."}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": {"city": "Lima", "days": 1}},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Sunny."}]},
        ]
    )
    prompt = responses_prompt(PERSONA, items, "Answer in English.", [WEATHER], "low")
    sysm, dev, *rest = prompt.messages
    assert prompt.shared == 2 and sysm.role is Role.SYSTEM and dev.role is Role.DEVELOPER
    assert dev.content[0].instructions == "Answer in English.\n\nBe brief." and "functions" in dev.content[0].tools
    assert [(m.role, m.channel, m.recipient) for m in rest] == [
        (Role.USER, None, None),
        (Role.ASSISTANT, "analysis", None),
        (Role.ASSISTANT, "commentary", "functions.get_weather"),
        (Role.TOOL, "commentary", "assistant"),
        (Role.ASSISTANT, "final", None),
    ]
    assert rest[0].text == "Weather in Lima?" and json.loads(rest[2].text) == {"city": "Lima", "days": 1}
    assert rest[3].author.name == "functions.get_weather" and rest[3].text == "sunny"
    # a string is one user message; earlier items (previous_response_id) are named apart from input[i]
    assert normalize_input("Hi") == [{"type": "message", "role": "user", "content": "Hi"}]
    with pytest.raises(ConversationError, match=r"input\[0\]\.call_id: 'nope' matches no earlier function_call"):
        responses_prompt(
            PERSONA,
            items[:1] + [{"type": "function_call_output", "call_id": "nope", "output": ""}],
            None,
            None,
            None,
            first_new=1,
        )


def test_builtin_call_items_become_harmony_messages():
    items = normalize_input(
        [
            {"role": "user", "content": "6*7?"},
            {
                "type": "code_interpreter_call",
                "id": "ci_1",
                "code": "print(6*7)",
                "container_id": "c",
                "outputs": [{"type": "logs", "logs": "42"}],
                "status": "completed",
            },
            {
                "type": "web_search_call",
                "id": "ws_1",
                "action": {"type": "search", "query": "q"},
                "status": "completed",
            },
        ]
    )
    messages = responses_prompt(PERSONA, items, None, None, None, builtin_tools=["python"]).messages
    call, answer = messages[-2:]
    assert (call.role, call.channel, call.recipient, call.content_type, call.text) == (
        Role.ASSISTANT,
        "analysis",
        "python",
        "code",
        "print(6*7)",
    )
    assert (answer.role, answer.author.name, answer.recipient, answer.text) == (Role.TOOL, "python", "assistant", "42")
    assert "python" in str(messages[0].content[0].tools)  # the system message declares the tool
    # a web_search_call sent back by hand carries no results: it adds nothing; a stored one replays exactly
    assert "_harmony" not in normalize_input([{**items[2], "_harmony": [{"role": "system", "content": "x"}]}])[0]
    stored = {**items[2], "_harmony": [call.to_dict(), answer.to_dict()]}
    replay = responses_prompt(PERSONA, [items[0], stored], None, None, None).messages
    assert [m.to_dict() for m in replay[-2:]] == [call.to_dict(), answer.to_dict()]


def test_turn_items_follow_the_parser(tokenizer):
    from gptoss.harmony import StreamParser

    text = (
        "<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>commentary to=functions.f "
        '<|constrain|>json<|message|>{"a":1}<|call|>'
    )
    parser = StreamParser(tokenizer, role=Role.ASSISTANT)
    items, events = TurnItems(), []
    for t in tokenizer.encoding.encode(text, allowed_special="all"):
        parser.process(t)
        events += items.update(parser)
    parser.process_eos()
    events += items.update(parser)
    assert [(i.kind, i.text, i.name) for i in items.items] == [
        ("reasoning", "think", None),
        ("function_call", '{"a":1}', "f"),
    ]
    kinds = [(e.kind, e.item.index) for e in events if e.kind != "delta"]
    assert kinds == [("added", 0), ("done", 0), ("added", 1), ("done", 1)]
    assert "".join(e.text for e in events if e.kind == "delta" and e.item.index == 1) == '{"a":1}'


def test_store_persists_and_is_thread_safe(tmp_path):
    path = tmp_path / "sub" / "r.sqlite"
    store = ResponseStore(path)

    def put(i):
        store.put(f"resp_{i}", {"id": f"resp_{i}"}, [{"type": "message", "role": "user", "content": str(i)}], [])

    threads = [threading.Thread(target=put, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store) == 16 and store.delete("resp_3") and not store.delete("resp_3")
    store.close()
    again = ResponseStore(path)
    assert len(again) == 15 and again.get("resp_5").input_items[0]["content"] == "5" and again.get("resp_3") is None
    again.close()
    memory = ResponseStore(None)
    memory.put("a", {}, [], [{"type": "reasoning"}])
    assert memory.get("a").output_items == [{"type": "reasoning"}]


# ---------------------------------------------------------------------------------------------- live server
def test_response_with_reasoning_item_and_retrieve(client):
    for seed in range(8):  # random weights: most turns start with reasoning; find one that does
        r = create(
            client,
            input=[{"role": "user", "content": "Hello"}],
            instructions="Be brief.",
            reasoning={"effort": "low"},
            seed=seed,
        )
        if r.output and r.output[0].type == "reasoning":
            break
    assert r.object == "response" and r.id.startswith("resp_") and r.model == MODEL
    assert r.reasoning.effort == "low" and r.instructions == "Be brief."
    assert r.status in ("completed", "incomplete")
    if r.status == "incomplete":
        assert r.incomplete_details.reason == "max_output_tokens" and r.usage.output_tokens == 16
    reasoning = r.output[0]
    assert reasoning.type == "reasoning" and reasoning.status == "completed" and reasoning.id.startswith("rs_")
    assert reasoning.content[0].type == "reasoning_text" and reasoning.content[0].text
    assert r.usage.output_tokens_details.reasoning_tokens >= 1 and r.usage.input_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    for item in r.output[1:]:
        assert item.type == "message" and item.role == "assistant" and "<|" not in item.content[0].text
    got = client.responses.retrieve(r.id)
    assert got.model_dump() == r.model_dump()


def test_stream_events_in_order(client, server):
    with client.responses.create(
        model=MODEL, input="Hello", max_output_tokens=24, stream=True, extra_body={"seed": 3}
    ) as stream:
        events = list(stream)
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    final = events[-1].response
    # each item: added, [content_part.added], deltas, done, [content_part.done], output_item.done
    items, i = [], 2
    while i < len(events) - 1:
        added = events[i]
        assert added.type == "response.output_item.added" and added.output_index == len(items)
        kind = added.item.type
        expect = {
            "reasoning": ("response.reasoning_text.delta", "response.reasoning_text.done"),
            "message": ("response.output_text.delta", "response.output_text.done"),
        }[kind]
        assert events[i + 1].type == "response.content_part.added" and events[i + 1].part.text == ""
        j = i + 2
        deltas = []
        while events[j].type == expect[0]:
            assert events[j].item_id == added.item.id and events[j].output_index == added.output_index
            deltas.append(events[j].delta)
            j += 1
        assert events[j].type == expect[1] and events[j].text == "".join(deltas)
        assert events[j + 1].type == "response.content_part.done" and events[j + 1].part.text == events[j].text
        done = events[j + 2]
        assert done.type == "response.output_item.done" and done.item.id == added.item.id
        items.append(done.item)
        i = j + 3
    assert [it.model_dump() for it in items] == [it.model_dump() for it in final.output]
    assert client.responses.retrieve(final.id).model_dump() == final.model_dump()
    # the wire format: "event: <type>" then "data: <json>"
    with httpx.stream(
        "POST", server + "/v1/responses", json={"model": MODEL, "input": "Hi", "max_output_tokens": 2, "stream": True}
    ) as raw:
        lines = [line for line in raw.iter_lines() if line]
    assert lines[0] == "event: response.created" and json.loads(lines[1][6:])["type"] == "response.created"


def test_function_call_streamed_validates_against_the_schema(client):
    with client.responses.create(
        model=MODEL,
        input="Weather in Paris?",
        tools=[WEATHER],
        tool_choice="required",
        max_output_tokens=160,
        stream=True,
        extra_body={"seed": 1},
    ) as stream:
        events = list(stream)
    final = events[-1].response
    assert events[-1].type == "response.completed" and final.status == "completed"
    call = final.output[-1]
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), SCHEMA)
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta" and e.item_id == call.id]
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert "".join(deltas) == call.arguments and done[0].arguments == call.arguments
    added = [e for e in events if e.type == "response.output_item.added" and e.item.type == "function_call"]
    assert added[0].item.arguments == "" and added[0].item.status == "in_progress"
    assert final.tools[0].name == "get_weather" and final.tool_choice == "required"


def test_function_call_output_round_trip_via_previous_response_id(client):
    first = call_weather(client, input="Weather in Lima?", seed=2)
    call = first.output[-1]
    second = create(
        client,
        previous_response_id=first.id,
        tools=[WEATHER],
        text={"format": {"type": "json_schema", "name": "answer", "schema": {"enum": ["sunny", "rainy"]}}},
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "sunny"}'}],
        max_output_tokens=120,
        seed=2,
    )
    assert second.previous_response_id == first.id and second.status == "completed"
    assert second.output[-1].type == "message" and json.loads(second.output[-1].content[0].text) in ("sunny", "rainy")
    # the stored input holds the earlier turn: the user message, the call, then its output
    assert second.usage.input_tokens > first.usage.input_tokens
    # a call_id that no earlier function_call made is a 400 naming the item
    with pytest.raises(openai.BadRequestError, match=r"input\[0\]\.call_id: 'call_nope' matches no earlier"):
        create(
            client,
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": "call_nope", "output": "x"}],
        )


def test_output_items_sent_back_as_input(client):
    """Sending the earlier turn's items by hand builds the same prompt as previous_response_id."""
    first = call_weather(client, input="Weather in Tokyo?", seed=4)
    answer = {"type": "function_call_output", "call_id": first.output[-1].call_id, "output": "cold"}
    items = [o.model_dump(exclude_none=True) for o in first.output]
    by_hand = create(
        client,
        input=[{"role": "user", "content": "Weather in Tokyo?"}, *items, answer],
        tools=[WEATHER],
        max_output_tokens=2,
    )
    chained = create(client, previous_response_id=first.id, input=[answer], tools=[WEATHER], max_output_tokens=2)
    assert by_hand.usage.input_tokens == chained.usage.input_tokens > first.usage.input_tokens


def test_store_false_and_404s(client):
    r = create(client, store=False, max_output_tokens=2)
    with pytest.raises(openai.NotFoundError, match="no stored response"):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError) as exc:
        create(client, previous_response_id="resp_missing")
    assert exc.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_missing")
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        create(client, model="not-a-model")
    kept = create(client, max_output_tokens=2)
    client.responses.delete(kept.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(kept.id)


@pytest.mark.parametrize(
    "input_, message",
    [
        ([{"type": "bogus"}], r"input\[0\]\.type: expected one of message, function_call, .* found 'bogus'"),
        ([42], r"input\[0\]: expected an object \(an input item\), found int"),
        ([{"role": "user", "content": "a"}, {"role": "wizard", "content": "b"}], r"input\[1\]\.role: expected user"),
        ([{"role": "user"}], r"input\[0\]\.content: required"),
        (
            [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}],
            r"input_image content is not supported",
        ),
        ([{"type": "function_call", "name": "f", "arguments": "{}"}], r"input\[0\]\.call_id: required"),
        ([{"type": "function_call_output", "call_id": "c9", "output": "x"}], r"'c9' matches no earlier function_call"),
        ([{"type": "item_reference", "id": "msg_1"}], r"item_reference items are not supported"),
        ([], r"input: the conversation is empty"),
    ],
)
def test_bad_items_are_400(server, input_, message):
    r = httpx.post(server + "/v1/responses", json={"model": MODEL, "input": input_})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    import re

    assert re.search(message, err["message"]), err["message"]


def test_bad_tools_are_400(client):
    with pytest.raises(openai.BadRequestError, match="'required' needs at least one tool"):
        create(client, tool_choice="required")
    with pytest.raises(openai.BadRequestError, match=r"tools\[0\]\.type: 'file_search' tools are not supported"):
        create(client, tools=[{"type": "file_search", "vector_store_ids": ["v"]}])
    with pytest.raises(openai.BadRequestError, match="invalid JSON Schema"):
        create(client, tools=[{**WEATHER, "parameters": {"type": "object", "properties": {"a": {"type": "nope"}}}}])


PYTHON_CALL = "<|channel|>analysis to=python code<|message|>print(6*7)<|call|>"
SEARCH_CALL = '<|channel|>analysis to=browser.search code<|message|>{"query":"harmony channels"}<|call|>'
ANSWER = "<|channel|>final<|message|>It is 42.<|return|>"


@pytest.fixture()
def forced_turns(monkeypatch, tokenizer):
    """The n-th assistant turn generated from now on emits exactly turns[n] (the grammar is set aside)."""
    from gptoss.conversation.session import force_tokens
    from gptoss.server import responses

    real = responses.GrammarConstraint

    def force(turns):
        encoded = [tokenizer.encoding.encode(t, allowed_special="all") for t in turns]
        monkeypatch.setattr(
            responses,
            "GrammarConstraint",
            lambda tok, lark: force_tokens(encoded.pop(0)) if encoded else real(tok, lark),
        )

    return force


def test_builtin_tools_run_in_the_loop_and_stream_their_events(client, toolbox, forced_turns, store_path):
    tools = [{"type": "code_interpreter", "container": {"type": "auto"}}, {"type": "web_search_preview"}]
    one_turn = create(client, input="What is 6*7?", tools=tools, max_output_tokens=1).usage.input_tokens
    forced_turns([PYTHON_CALL, SEARCH_CALL, ANSWER])
    with client.responses.create(
        model=MODEL, input="What is 6*7?", max_output_tokens=200, stream=True, tools=tools
    ) as stream:
        events = list(stream)
    types = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert types[-1] == "response.completed" and [o.type for o in final.output] == [
        "code_interpreter_call",
        "web_search_call",
        "message",
    ]
    code, search, answer = final.output
    assert code.code == "print(6*7)" and code.status == "completed" and code.outputs[0].logs.strip() == "42"
    assert search.status == "completed" and search.action.type == "search" and search.action.query == "harmony channels"
    assert answer.content[0].text == "It is 42."
    ci = [
        t
        for t, e in zip(types, events)
        if getattr(e, "item_id", None) == code.id or getattr(getattr(e, "item", None), "id", None) == code.id
    ]
    assert ci[0] == "response.output_item.added" and ci[1] == "response.code_interpreter_call.in_progress"
    assert ci[-5:] == [
        "response.code_interpreter_call_code.delta",
        "response.code_interpreter_call_code.done",
        "response.code_interpreter_call.interpreting",
        "response.code_interpreter_call.completed",
        "response.output_item.done",
    ]
    assert "".join(e.delta for e in events if e.type == "response.code_interpreter_call_code.delta") == "print(6*7)"
    ws = [
        t
        for t, e in zip(types, events)
        if getattr(e, "item_id", None) == search.id or getattr(getattr(e, "item", None), "id", None) == search.id
    ]
    assert ws == [
        "response.output_item.added",
        "response.web_search_call.in_progress",
        "response.web_search_call.searching",
        "response.web_search_call.completed",
        "response.output_item.done",
    ]
    # three turns, each prompt holding the calls and answers before it
    assert final.usage.input_tokens > 3 * one_turn
    # each step of the loop reuses the KV of the steps before it (one turn: its analysis stays in the prompt),
    # the first step that of the one-turn request: at least that prompt's whole blocks, three times
    assert final.usage.input_tokens_details.cached_tokens >= 3 * ((one_turn - 1) // 16 * 16) > 0
    # the store keeps the exact Harmony messages of each call, search results included (not shown to clients)
    stored = ResponseStore(store_path).get(final.id)
    assert "Harmony is the chat format" in stored.output_items[1]["_harmony"][1]["content"][0]["text"]
    assert "_harmony" not in json.dumps(client.responses.retrieve(final.id).model_dump())
    forced_turns([ANSWER])  # (Harmony drops the finished turn's tool calls from the next prompt)
    follow = create(client, previous_response_id=final.id, input="And?", max_output_tokens=40)
    assert follow.status == "completed" and follow.output[-1].content[0].text == "It is 42."
    # (no tools this time: its prompt shares only the system message's first blocks with the loop's)
    assert 0 < follow.usage.input_tokens_details.cached_tokens < follow.usage.input_tokens


def test_browser_citations_become_url_annotations(client, toolbox, forced_turns):
    opened = '<|channel|>analysis to=browser.open code<|message|>{"id": 0}<|call|>'
    cited = "<|channel|>final<|message|>Harmony has three channels 【1†L2-L3】.<|return|>"
    forced_turns([SEARCH_CALL, opened, cited])
    with client.responses.create(
        model=MODEL,
        input="How many channels?",
        max_output_tokens=200,
        stream=True,
        tools=[{"type": "web_search_preview"}],
    ) as stream:
        events = list(stream)
    answer = events[-1].response.output[-1]
    text = answer.content[0].text
    assert text == "Harmony has three channels 【1†L2-L3】."  # the text stays as streamed
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == text
    (ann,) = answer.content[0].annotations
    assert ann.type == "url_citation" and text[ann.start_index : ann.end_index] == "【1†L2-L3】"
    assert ann.url.endswith("harmony.md") and ann.title
    added = [e for e in events if e.type == "response.output_text.annotation.added"]
    assert len(added) == 1 and added[0].annotation.url == ann.url
    assert client.responses.retrieve(events[-1].response.id).output[-1].content[0].annotations[0].url == ann.url


def test_builtin_tool_choice_forces_the_first_call_only(client, toolbox):
    from gptoss.conversation.openai_responses import responses_grammar

    first = responses_grammar(PERSONA, {"f": None}, ["browser", "python"], {"type": "web_search_preview"}, None)
    assert "ending: bt_browser_2e_search | bt_browser_2e_open | bt_browser_2e_find\n" in first.lark()
    later = responses_grammar(
        PERSONA, {"f": None}, ["browser", "python"], {"type": "web_search_preview"}, None, first_turn=False
    )
    assert later.tool_choice == "auto" and "final" in later.lark() and "bt_python" in later.lark()
    spent = responses_grammar(PERSONA, {}, [], "required", None, first_turn=False)  # max_tool_calls reached
    assert spent.tool_choice == "none" and not spent.builtin_tools
    r = create(client, tools=[{"type": "web_search"}], tool_choice={"type": "web_search"}, max_output_tokens=1)
    assert r.tool_choice.type == "web_search_preview" and r.tools[0].type == "web_search"
    with pytest.raises(openai.BadRequestError, match="'code_interpreter' is not among the tools"):
        create(client, tools=[{"type": "web_search"}], tool_choice={"type": "code_interpreter"})
    with pytest.raises(openai.BadRequestError, match="'file_search' is not supported"):
        create(client, tools=[{"type": "web_search"}], tool_choice={"type": "file_search"})


def test_previous_response_survives_a_restart(checkpoint, tmp_path):
    path = str(tmp_path / "responses.sqlite")
    with serve(_llm(checkpoint), persona=PERSONA, store_path=path) as base:
        c = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        first = call_weather(c, input="Weather in Paris?", seed=5)
    with serve(_llm(checkpoint), persona=PERSONA, store_path=path) as base:
        c = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        assert c.responses.retrieve(first.id).model_dump() == first.model_dump()
        second = create(
            c,
            previous_response_id=first.id,
            tools=[WEATHER],
            max_output_tokens=4,
            input=[{"type": "function_call_output", "call_id": first.output[-1].call_id, "output": "warm"}],
        )
        assert second.previous_response_id == first.id and second.status in ("completed", "incomplete")
        assert second.usage.input_tokens > first.usage.input_tokens
        assert c.responses.retrieve(second.id).id == second.id
        with pytest.raises(openai.BadRequestError, match=r"tools\[0\]\.type: this server has no python tool"):
            create(c, tools=[{"type": "code_interpreter", "container": {"type": "auto"}}])


# ---------------------------------------------------------------------------------------------- teardown
SLEEP_CALL = "<|channel|>analysis to=python code<|message|>import time\ntime.sleep(60)<|call|>"


def _sandboxes_left() -> tuple[list[str], list[str], set[int]]:
    """Folders and mounts of this process's sandboxes, and every process below this one."""
    import os
    import tempfile

    from gptoss.tools.python.processes import descendants, host_tag

    tag = host_tag()
    folders = sorted(
        n for n in os.listdir(tempfile.gettempdir()) if n.startswith((f"gptoss-py-{tag}-", f"gptoss-data-{tag}-"))
    )
    with open("/proc/self/mountinfo") as f:
        mounts = sorted(p for p in (line.split()[4] for line in f) if f"-{tag}-" in p)
    return folders, mounts, set(descendants(os.getpid()))


def test_a_client_that_disconnects_during_a_tool_call_leaks_no_sandbox(server, toolbox, forced_turns):
    """The stream is closed right after code_interpreter_call.interpreting (at once, and a little later),
    while the kernel starts or runs: afterwards no folder, mount or process of a sandbox is left."""
    import socket
    import time

    before = _sandboxes_left()
    delays = (0.0, 1.0, 4.0)  # while the kernel starts, and while the code runs
    forced_turns([SLEEP_CALL] * len(delays))
    body = json.dumps(
        {
            "model": MODEL,
            "input": "Sleep.",
            "max_output_tokens": 200,
            "stream": True,
            "tools": [{"type": "code_interpreter", "container": {"type": "auto"}}],
        }
    ).encode()
    host, port = server.removeprefix("http://").split(":")
    for delay in delays:
        with socket.create_connection((host, int(port)), timeout=60) as sock:  # a client that just goes away
            sock.sendall(
                b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            seen = b""
            while b"event: response.code_interpreter_call.interpreting" not in seen:
                chunk = sock.recv(65536)
                assert chunk, "the stream ended before the call ran"
                seen += chunk
            time.sleep(delay)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _sandboxes_left() != before:
        time.sleep(0.1)
    folders, mounts, procs = _sandboxes_left()
    assert (folders, mounts) == before[:2] and procs <= before[2], (folders, mounts, procs - before[2])


def test_a_server_start_removes_what_a_crashed_one_left(checkpoint, tmp_path):
    """Folders, their tmpfs mounts, and cgroups with a frozen process in them, named after a host that no
    longer runs: gone once a server with the Python tool has started. A live host's are kept."""
    import os
    import subprocess
    import tempfile

    from gptoss.tools import Toolbox
    from gptoss.tools.python import PythonTool
    from gptoss.tools.python.mounts import mount_tmpfs, unmount
    from gptoss.tools.python.processes import host_tag

    with open("/proc/sys/kernel/pid_max") as f:
        dead = f"{int(f.read()) + 1}.1"  # no process can have this pid
    tmp = tempfile.gettempdir()
    stale = [os.path.join(tmp, f"gptoss-py-{dead}-test"), os.path.join(tmp, f"gptoss-data-{dead}-test")]
    live = os.path.join(tmp, f"gptoss-py-{host_tag()}-kept")
    for d in stale + [live]:
        os.makedirs(os.path.join(d, "s"), exist_ok=True)
    sleeper, cgroup, mounted = None, None, False
    if os.geteuid() == 0:
        try:
            mount_tmpfs(os.path.join(stale[0], "s"), 1 << 20)
            mounted = True
        except OSError:
            pass
        parent = "/sys/fs/cgroup/freezer" if os.path.isdir("/sys/fs/cgroup/freezer") else "/sys/fs/cgroup"
        cgroup = os.path.join(parent, f"gptoss-sandboxes-{dead}", f"gptoss-python-{dead}-test")
        try:
            os.makedirs(cgroup)
            sleeper = subprocess.Popen(["sleep", "300"])
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write(str(sleeper.pid))
            for name, value in (("freezer.state", "FROZEN"), ("cgroup.freeze", "1")):
                if os.path.exists(os.path.join(cgroup, name)):
                    with open(os.path.join(cgroup, name), "w") as f:
                        f.write(value)
        except OSError:
            cgroup = None
    try:
        with serve(
            _llm(checkpoint),
            persona=PERSONA,
            store_path=str(tmp_path / "store.sqlite"),
            toolbox=Toolbox([PythonTool()]),
        ):
            assert not [d for d in stale if os.path.exists(d)] and os.path.isdir(live)
            if cgroup is not None:
                assert sleeper.wait(timeout=10) == -9 and not os.path.exists(os.path.dirname(cgroup))
            if mounted:
                with open("/proc/self/mountinfo") as f:
                    assert not [line for line in f if f"-{dead}-" in line]
    finally:
        if sleeper is not None and sleeper.poll() is None:
            sleeper.kill()
        if mounted:
            unmount(os.path.join(stale[0], "s"))
        import shutil

        for d in stale + [live]:
            shutil.rmtree(d, ignore_errors=True)


def test_closing_a_responses_tools_survives_the_cancellation_that_ended_it():
    """anyio (Starlette's streams) cancels every await in a cancelled scope, those of a finally too: the
    tools' close still runs to its end."""
    import asyncio

    import anyio

    from gptoss.server.responses import _closing

    class SlowTools:
        closed = False

        async def aclose(self):
            for _ in range(3):
                await asyncio.sleep(0.05)
            self.closed = True

    async def main():
        tools = SlowTools()
        with anyio.CancelScope() as scope:
            scope.cancel()
            try:
                await asyncio.sleep(10)
            finally:
                await _closing.close(tools)
        await _closing.wait(timeout=5)
        return tools.closed

    assert asyncio.run(main())


def test_browser_search_is_the_browser_under_the_reference_servers_name(client, toolbox, forced_turns):
    forced_turns([SEARCH_CALL, ANSWER])
    r = create(
        client,
        input="How many channels?",
        max_output_tokens=200,
        tools=[{"type": "browser_search"}],
        tool_choice={"type": "browser_search"},
    )
    assert [o.type for o in r.output] == ["web_search_call", "message"]
    assert r.output[0].status == "completed" and r.output[0].action.query == "harmony channels"
    assert r.tools[0].type == "web_search" and r.tool_choice.type == "web_search_preview"  # the SDK's own types


def test_top_level_reasoning_effort_is_honoured(client, monkeypatch):
    from gptoss.server import responses

    seen = []
    real = responses.responses_prompt
    monkeypatch.setattr(responses, "responses_prompt", lambda *a, **kw: (seen.append(a[4]), real(*a, **kw))[1])
    r = client.responses.create(model=MODEL, input="Hi", max_output_tokens=1, extra_body={"reasoning_effort": "high"})
    assert r.reasoning.effort == "high" and seen == ["high"]
    r = create(client, max_output_tokens=1, reasoning={"effort": "low"}, extra_body={"reasoning_effort": "low"})
    assert r.reasoning.effort == "low"
    with pytest.raises(openai.BadRequestError, match="reasoning_effort: 'high' disagrees with reasoning.effort 'low'"):
        create(client, reasoning={"effort": "low"}, extra_body={"reasoning_effort": "high"})
