"""Every row of README's "Bad requests" table, against a live server, which keeps serving afterwards."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import serve

URL = "/v1/chat/completions"
OK = {"model": "gpt-oss", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


def body(**changes):
    out = dict(OK)
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


# README row text -> how to send it: (method, path, json or raw content, headers)
CASES = {
    "body that is not JSON": ("POST", URL, b'{"model": "gpt-oss", ', {"content-type": "application/json"}),
    "body that is a JSON list": ("POST", URL, [1, 2], None),
    "body that is not UTF-8": (
        "POST",
        URL,
        b'{"model": "gpt-oss", "messages": [{"role": "user", "content": "\xff"}]}',
        {"content-type": "application/json"},
    ),
    "body nested 20,000 levels deep": (
        "POST",
        URL,
        b'{"model": "gpt-oss", "metadata": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
        {"content-type": "application/json"},
    ),
    "`seed` beyond signed 64-bit (`2**64`)": ("POST", URL, body(seed=2**64), None),
    '`temperature: "hot"`': ("POST", URL, body(temperature="hot"), None),
    "`messages: []`": ("POST", URL, body(messages=[]), None),
    "no `messages`": ("POST", URL, body(messages=None), None),
    'message with `role: "robot"`': ("POST", URL, body(messages=[{"role": "robot", "content": "x"}]), None),
    "image content part": (
        "POST",
        URL,
        body(
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1/x.png"}}]}
            ]
        ),
        None,
    ),
    '`model: "gpt-5"`': ("POST", URL, body(model="gpt-5"), None),
    "prompt alone beyond the context": (
        "POST",
        URL,
        body(messages=[{"role": "user", "content": "word " * 2500}]),
        None,
    ),
    "tool whose `parameters` is not a valid JSON Schema": (
        "POST",
        URL,
        body(
            tools=[
                {
                    "type": "function",
                    "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "strin"}}}},
                }
            ]
        ),
        None,
    ),
    "`tool_choice` naming an undeclared function": (
        "POST",
        URL,
        body(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "nope"}}),
        None,
    ),
    '`tool_choice: "required"` without tools': ("POST", URL, body(tool_choice="required"), None),
    "tool message whose `tool_call_id` matches no call": (
        "POST",
        URL,
        body(messages=[{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]),
        None,
    ),
    "five `stop` strings": ("POST", URL, body(stop=["a", "b", "c", "d", "e"]), None),
    "`top_logprobs` without `logprobs`": ("POST", URL, body(top_logprobs=2), None),
    "body over the size limit": ("POST", URL, body(messages=[{"role": "user", "content": "x" * 70_000}]), None),
    "unknown path": ("POST", "/v1/nothing", OK, None),
}


def readme_rows() -> list[tuple[str, int, str]]:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("### Bad requests", 1)[1]
    rows = []
    for line in section.splitlines():
        m = re.match(r"^\| (.+?) \| (\d{3}) \| (.+?) \|$", line)
        if m:
            rows.append((m.group(1), int(m.group(2)), m.group(3)))
    return rows


ROWS = readme_rows()
SPECIAL = {
    "missing or wrong API key (server started with `--api-key`)",
    "request while the queue is full",
    "body still incomplete after `body_timeout` (30 s)",
}  # the last: tests/server/test_security.py


def test_every_readme_row_is_tested():
    assert {r[0] for r in ROWS} == set(CASES) | SPECIAL


@pytest.fixture(scope="module")
def server(tiny_llm):
    with serve(tiny_llm(max_batch=2), max_body_bytes=64_000) as base:
        yield base


def send(base, method, path, payload, headers):
    if isinstance(payload, bytes):
        return httpx.request(method, base + path, content=payload, headers=headers, timeout=60)
    return httpx.request(method, base + path, json=payload, headers=headers, timeout=60)


@pytest.mark.parametrize("row", [r for r in ROWS if r[0] in CASES], ids=lambda r: r[0])
def test_bad_request(server, row):
    name, status, message = row
    r = send(server, *CASES[name])
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert message in error["message"], error["message"]
    # and the server keeps serving
    assert send(server, "POST", URL, OK, None).status_code == 200


def test_chunked_body_over_the_limit(server):
    """A body sent without Content-Length is cut off at the limit too."""
    chunks = (b'{"model": "gpt-oss", "messages": [{"role": "user", "content": "' + b"x" * 10_000 for _ in range(10))
    r = httpx.post(server + URL, content=chunks, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and "over the limit of 64000 bytes" in r.json()["error"]["message"]
    assert send(server, "POST", URL, OK, None).status_code == 200


def test_api_key(tiny_llm):
    row = next(r for r in ROWS if r[0].startswith("missing or wrong API key"))
    with serve(tiny_llm(max_batch=1), api_key="sekret") as base:
        for headers in (None, {"authorization": "Bearer wrong"}):
            r = send(base, "POST", URL, OK, headers)
            assert r.status_code == row[1] and row[2] in r.json()["error"]["message"]
        assert send(base, "POST", URL, OK, {"authorization": "Bearer sekret"}).status_code == 200
        assert httpx.get(base + "/health").status_code == 200  # health stays open for load balancers


def test_queue_full_answers_429_with_retry_after(tiny_llm):
    row = next(r for r in ROWS if r[0] == "request while the queue is full")
    long = body(max_tokens=600)
    with serve(tiny_llm(max_batch=1), max_queue=1) as base:
        results = []

        def fire():
            results.append(send(base, "POST", URL, long, None))

        threads = [threading.Thread(target=fire) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        busy = [r for r in results if r.status_code == 429]
        assert busy, [r.status_code for r in results]
        assert busy[0].headers["retry-after"] == "1" and row[2] in busy[0].json()["error"]["message"]
        assert any(r.status_code == 200 for r in results)
        assert send(base, "POST", URL, OK, None).status_code == 200
