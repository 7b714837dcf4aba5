"""Attacks on the HTTP server: one client's request never fails another's, the event loop
stays free while requests are tokenized, every route that computes or reveals data wants the key, slow
clients are dropped, stored responses belong to the key that made them. docs/security.md lists each test."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest

from tests.server.conftest import serve

CHAT = "/v1/chat/completions"
RESP = "/v1/responses"
MSG = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def llm(tiny_llm):
    return tiny_llm(max_batch=6, max_model_len=512)


@pytest.fixture(scope="module")
def server(llm):
    with serve(llm) as base:
        yield base


def chat(**kw):
    return {"model": "gpt-oss", "messages": MSG, "max_tokens": 4, **kw}


def resp(**kw):
    return {"model": "gpt-oss", "input": "Hi", "max_output_tokens": 4, "store": False, **kw}


# ------------------------------------------------------------------------------------ sampling parameters
OUT_OF_RANGE = [
    (CHAT, chat, "seed", 2**64),
    (CHAT, chat, "seed", -(2**63) - 1),
    (CHAT, chat, "temperature", 2.5),
    (CHAT, chat, "temperature", -0.1),
    (CHAT, chat, "top_p", 0),
    (CHAT, chat, "top_p", 1.5),
    (CHAT, chat, "n", 0),
    (CHAT, chat, "n", 17),
    (CHAT, chat, "max_tokens", 0),
    (CHAT, chat, "max_completion_tokens", -1),
    (CHAT, chat, "top_logprobs", 21),
    (CHAT, chat, "frequency_penalty", 2.5),
    (CHAT, chat, "presence_penalty", -3),
    (CHAT, chat, "stop", ["a", "b", "c", "d", "e"]),
    (RESP, resp, "seed", 2**64),
    (RESP, resp, "temperature", 3),
    (RESP, resp, "top_p", 0),
    (RESP, resp, "max_output_tokens", 0),
    (RESP, resp, "top_logprobs", 21),
    (RESP, resp, "max_tool_calls", -1),
]


@pytest.mark.parametrize("path,make,name,value", OUT_OF_RANGE, ids=lambda x: x if isinstance(x, str) else None)
def test_out_of_range_sampling_parameter_is_a_400_naming_it(server, path, make, name, value):
    r = httpx.post(server + path, json=make(**{name: value}), timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == name and error["message"].startswith(name), error


@pytest.mark.parametrize("path,make", [(CHAT, chat), (RESP, resp)], ids=["chat", "responses"])
def test_a_bad_seed_among_four_innocent_streams_fails_alone(server, path, make):
    """Seed 2**64 (outside what a generator takes) next to four streams: only its own request fails."""

    async def innocent(client, i):
        body = (
            chat(max_tokens=12, seed=i, stream=True)
            if path == CHAT
            else resp(max_output_tokens=12, seed=i, stream=True)
        )
        async with client.stream("POST", path, json=body) as r:
            assert r.status_code == 200
            text = "".join([line async for line in r.aiter_lines()])
        return text

    async def bad(client):
        await asyncio.sleep(0.05)
        return await client.post(path, json=make(seed=2**64, stream=True))

    async def main():
        async with httpx.AsyncClient(base_url=server, timeout=120) as client:
            return await asyncio.gather(bad(client), *(innocent(client, i) for i in range(4)))

    rejected, *streams = asyncio.run(main())
    assert rejected.status_code == 400 and rejected.json()["error"]["param"] == "seed"
    for text in streams:
        assert "error" not in text and "failed" not in text, text[-300:]
        assert ("[DONE]" in text) if path == CHAT else ("response.incomplete" in text or "response.completed" in text)


# ------------------------------------------------------------------------------------ the event loop
@pytest.mark.parametrize(
    "path,make", [("/tokenize", chat), (CHAT, chat), (RESP, resp)], ids=["tokenize", "chat", "responses"]
)
def test_health_answers_while_a_prompt_is_being_tokenized(server, llm, monkeypatch, path, make):
    """Tokenizing runs off the event loop: with one tokenization held in progress, /health still answers
    (it used to wait for the whole tokenization: seconds for a 3.9 MB body)."""
    import threading

    tokenizer = llm.tokenizer  # the server's
    entered, release = threading.Event(), threading.Event()
    encode = tokenizer.encode

    def held(text):
        if "HOLD-THIS-ONE" in text:
            entered.set()
            release.wait(60)
        return encode(text)

    monkeypatch.setattr(tokenizer, "encode", held)
    content = (
        "HOLD-THIS-ONE" + " " * 40_000
    )  # big enough to be tokenized off the loop (short text is inline), 300-odd tokens
    body = make(messages=[{"role": "user", "content": content}]) if make is chat else make(input=content)
    result = []
    worker = threading.Thread(target=lambda: result.append(httpx.post(server + path, json=body, timeout=120)))
    worker.start()
    try:
        assert entered.wait(60), "the request never reached the tokenizer"
        health = httpx.get(server + "/health", timeout=10)  # answered while the tokenizer is still held
        assert health.status_code == 200 and not result
    finally:
        release.set()
        worker.join(120)
    assert result and result[0].status_code == 200, result


def test_health_stays_quick_while_three_megabyte_prompts_are_tokenized(tiny_llm):
    """Three /tokenize requests of 1.2 MB each (issue: /health took 2.4 s meanwhile): tokenizing, decoding
    and encoding their answers run on the worker pool. The clients are raw sockets, so that they take
    next to nothing of this process's GIL from the server thread."""
    import socket
    import threading

    text = "Giant pandas eat bamboo in the mountain forests of Sichuan. " * 20_000
    body = json.dumps({"model": "gpt-oss", "messages": [{"role": "user", "content": text}]}).encode()
    with serve(tiny_llm(max_batch=1, max_model_len=16384)) as base:
        port = int(base.rsplit(":", 1)[1])
        answers: list[bytes] = []

        def post():
            with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
                sock.sendall(
                    b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body
                )
                chunks = []
                while chunk := sock.recv(1 << 20):
                    chunks.append(chunk)
                answers.append(b"".join(chunks))

        clients = [threading.Thread(target=post) for _ in range(3)]
        for c in clients:
            c.start()
        worst, probes = 0.0, 0
        with httpx.Client(base_url=base, timeout=30) as client:
            while any(c.is_alive() for c in clients):
                started = time.perf_counter()
                assert client.get("/health").status_code == 200
                worst, probes = max(worst, time.perf_counter() - started), probes + 1
                time.sleep(0.01)
        for c in clients:
            c.join()
    assert len(answers) == 3 and all(a.startswith(b"HTTP/1.1 200") and b'"count":' in a for a in answers)
    assert worst < 1.0, f"/health took {worst:.2f} s ({probes} probes)"


@pytest.mark.parametrize("path,make", [(CHAT, chat), (RESP, resp)], ids=["chat", "responses"])
def test_health_answers_while_a_turn_grammar_is_compiled(server, monkeypatch, path, make):
    """Compiling a turn's grammar (seconds for large tool schemas: 13.9 s for three tools of 2,000
    properties, most of it building the matcher) runs off the event loop too."""
    import threading

    from gptoss.server import chat_completions, responses

    module = chat_completions if path == CHAT else responses
    entered, release = threading.Event(), threading.Event()
    real = module.GrammarConstraint

    def held(tok, lark):
        entered.set()
        release.wait(60)
        return real(tok, lark)

    monkeypatch.setattr(module, "GrammarConstraint", held)
    result = []
    worker = threading.Thread(target=lambda: result.append(httpx.post(server + path, json=make(), timeout=120)))
    worker.start()
    try:
        assert entered.wait(60), "the request never compiled a grammar"
        assert httpx.get(server + "/health", timeout=10).status_code == 200 and not result
    finally:
        release.set()
        worker.join(120)
    assert result and result[0].status_code == 200, result


def test_a_prompt_that_cannot_fit_is_refused_before_tokenizing(server, llm, monkeypatch):
    """3.9 MB of text cannot fit in 512 tokens whatever it says: refused from its length alone."""
    tokenizer = llm.tokenizer
    longest = []
    encode = tokenizer.encode
    monkeypatch.setattr(tokenizer, "encode", lambda text: (longest.append(len(text)), encode(text))[1])
    huge = "word " * 780_000
    for path, body, field in (
        ("/tokenize", chat(messages=[{"role": "user", "content": huge}]), "messages"),
        (CHAT, chat(messages=[{"role": "user", "content": [{"type": "text", "text": huge}]}]), "messages"),
        (RESP, resp(input=[{"role": "user", "content": huge}]), "input"),
    ):
        r = httpx.post(server + path, json=body, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
        assert r.json()["error"]["param"] == field
    assert max(longest, default=0) < 1000  # the huge text never reached the tokenizer


# ------------------------------------------------------------------------------------ the API key
def test_every_route_but_health_wants_the_key(tiny_llm):
    with serve(tiny_llm(max_batch=1, max_model_len=256), api_key="sekret") as base:
        routes = [
            ("POST", "/tokenize", chat()),
            ("GET", "/metrics", None),
            ("GET", "/v1/models", None),
            ("POST", CHAT, chat()),
            ("POST", RESP, resp()),
            ("GET", "/v1/responses/resp_x", None),
            ("DELETE", "/v1/responses/resp_x", None),
            ("GET", "/openapi.json", None),
            ("GET", "/docs", None),
        ]
        for method, path, body in routes:
            for headers in ({}, {"authorization": "Bearer wrong"}):
                r = httpx.request(method, base + path, json=body, headers=headers, timeout=60)
                assert r.status_code == 401, (method, path, r.status_code)
                assert r.json()["error"]["code"] == "invalid_api_key"
            r = httpx.request(method, base + path, json=body, headers={"authorization": "Bearer sekret"}, timeout=60)
            assert r.status_code in (200, 404), (method, path, r.status_code, r.text)  # 404: no such stored response
        assert httpx.get(base + "/health").status_code == 200


# ------------------------------------------------------------------------------------ slow clients
def test_slow_headers_and_a_slow_body_are_dropped_while_others_are_served(tiny_llm):
    """Slowloris: request headers one byte at a time (uvicorn alone would wait forever, since every byte
    resets its only timer), and a body that stops halfway. Others are served meanwhile."""
    with serve(tiny_llm(max_batch=1, max_model_len=256), header_timeout=1.5, body_timeout=1.5) as base:
        port = int(base.rsplit(":", 1)[1])
        slow = socket.create_connection(("127.0.0.1", port))
        slow.settimeout(0.4)
        request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + b"X-A: b\r\n" * 40
        )
        closed_after = None
        start = time.monotonic()
        for i in range(len(request)):  # one byte every 0.4 s at most: 1.5 s allows a few
            try:
                slow.sendall(request[i : i + 1])
                if slow.recv(1) == b"":
                    closed_after = time.monotonic() - start
                    break
            except socket.timeout:
                assert httpx.get(base + "/health", timeout=5).status_code == 200  # others are served
            except OSError:
                closed_after = time.monotonic() - start
                break
            if time.monotonic() - start > 15:
                break
        slow.close()
        assert closed_after is not None, "the slow client kept its connection"

        trickle = socket.create_connection(("127.0.0.1", port))
        trickle.settimeout(15)
        trickle.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"model": "gpt-oss", '
        )
        assert httpx.get(base + "/v1/models", timeout=10).status_code == 200
        answer = b""
        while b"within" not in answer and (chunk := trickle.recv(4096)):
            answer += chunk
        trickle.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"the request body did not arrive within 1.5 s" in answer


# ------------------------------------------------------------------------------------ stored responses
def test_a_stored_response_belongs_to_the_key_that_created_it(tiny_llm, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# one key a line\nalice-key\n\n  bob-key  \n")
    from gptoss.server.state import read_api_keys

    assert read_api_keys(str(keys)) == ["alice-key", "bob-key"]
    alice, bob = ({"authorization": f"Bearer {k}-key"} for k in ("alice", "bob"))
    with serve(tiny_llm(max_batch=1, max_model_len=256), api_keys=read_api_keys(str(keys))) as base:
        r = httpx.post(base + RESP, json=resp(store=True, max_output_tokens=2), headers=alice, timeout=120)
        assert r.status_code == 200, r.text
        rid = r.json()["id"]
        for method, path, body in (
            ("GET", f"/v1/responses/{rid}", None),
            ("GET", f"/v1/responses/{rid}/input_items", None),
            ("DELETE", f"/v1/responses/{rid}", None),
            ("POST", RESP, resp(previous_response_id=rid)),
        ):
            seen = httpx.request(method, base + path, json=body, headers=bob, timeout=60)
            assert seen.status_code == 404, (method, path, seen.text)  # as absent as a missing one
            assert seen.json()["error"]["code"] == "response_not_found"
        assert httpx.get(base + f"/v1/responses/{rid}", headers=alice).json()["id"] == rid
        assert httpx.delete(base + f"/v1/responses/{rid}", headers=alice).json()["deleted"] is True


def test_stored_responses_expire(tmp_path, monkeypatch):
    from gptoss.server import store as store_module
    from gptoss.server.store import ResponseStore

    now = [1000.0]
    monkeypatch.setattr(store_module.time, "time", lambda: now[0])
    store = ResponseStore(tmp_path / "r.sqlite", ttl=60)
    store.claim("resp_a", "owner-a")
    store.put("resp_a", {"id": "resp_a"}, [], [])
    store.put_events("resp_a", [{"type": "response.completed"}])
    assert store.get("resp_a", "owner-a") is not None and store.get("resp_a", "owner-b") is None
    now[0] += 61
    assert store.get("resp_a") is None and store.events("resp_a") is None and not store.delete("resp_a")
    store.put("resp_b", {"id": "resp_b"}, [], [])  # a new arrival purges what expired
    assert len(store) == 1
    rows = store._db.execute("SELECT COUNT(*) FROM response_events").fetchone()[0]
    owners = store._db.execute("SELECT COUNT(*) FROM response_owners").fetchone()[0]
    assert rows == 0 and owners == 0
    store.close()


def test_an_unreadable_or_empty_keys_file_is_one_line(tmp_path):
    from gptoss.errors import GptossError
    from gptoss.server.state import read_api_keys

    (tmp_path / "empty").write_text("# nothing\n\n")
    with pytest.raises(GptossError, match="no keys in it"):
        read_api_keys(str(tmp_path / "empty"))
    with pytest.raises(GptossError, match="cannot read it"):
        read_api_keys(str(tmp_path / "absent"))


# ------------------------------------------------------------------------------------ a truncated checkpoint
def test_a_bus_error_from_a_truncated_mapped_file_is_explained_in_one_line(tmp_path):
    """What a served checkpoint truncated under the server does: a read of a mapped page that is gone.
    The process still dies (nothing can continue), but its log says what happened and why."""
    import signal
    import subprocess
    import sys

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\1" * (1 << 20))
    script = f"""
import mmap, os, torch
from gptoss.server.crash import explain_fatal_signals
explain_fatal_signals({str(tmp_path)!r})
f = open({str(weights)!r}, "r+b")
m = mmap.mmap(f.fileno(), 0)
t = torch.frombuffer(m, dtype=torch.uint8)
os.truncate({str(weights)!r}, 0)
print(int(t.sum()))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGBUS, (proc.returncode, proc.stderr[-2000:])
    first = next(line for line in proc.stderr.splitlines() if line.strip())
    assert first == (
        f"gptoss: the server died of SIGBUS: a memory-mapped checkpoint file in {tmp_path} was "
        "truncated or replaced while being served; restore the files and restart the server"
    )
    assert "Fatal Python error: Bus error" in proc.stderr
