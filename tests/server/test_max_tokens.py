"""A max_tokens above what the context leaves after the prompt: clamped to it (as vLLM and OpenAI's reference
gpt-oss server do: the gpt-oss eval harness sends max_tokens=131072 on every request), or, with
strict_max_tokens, OpenAI's 400."""

from __future__ import annotations

import httpx
import pytest

from tests.server.conftest import serve

CONTEXT = 320
MODEL = "gpt-oss"


@pytest.fixture(scope="module")
def llm(tiny_llm):
    return tiny_llm(max_batch=2, max_model_len=CONTEXT)


def _filler(base: str, room: int) -> list[dict]:
    """Chat messages whose prompt leaves exactly ``room`` tokens of the context."""
    words = 0
    for _ in range(4):  # " word" is one token: the count converges in a step or two
        messages = [{"role": "user", "content": "word " * words}]
        count = httpx.post(base + "/tokenize", json={"model": MODEL, "messages": messages}).json()["count"]
        if count == CONTEXT - room:
            return messages
        words += CONTEXT - room - count
    raise AssertionError("could not size the prompt")


def test_max_tokens_beyond_the_context_is_clamped_to_what_it_leaves(llm):
    with serve(llm) as base:
        messages = _filler(base, room=4)  # fewer tokens than the shortest whole turn: it must end by length
        for field in ("max_tokens", "max_completion_tokens"):
            r = httpx.post(
                base + "/v1/chat/completions", timeout=60, json={"model": MODEL, "messages": messages, field: 131072}
            )
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["finish_reason"] == "length"
            assert r.json()["usage"]["completion_tokens"] == 4
        r = httpx.post(
            base + "/v1/responses",
            timeout=60,
            json={"model": MODEL, "input": "Hi", "max_output_tokens": 131072, "temperature": 0},
        )
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        assert usage["input_tokens"] + usage["output_tokens"] <= CONTEXT
        # the prompt alone over the context stays a 400
        r = httpx.post(
            base + "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "word " * (CONTEXT + 10)}]},
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        assert r.json()["error"]["param"] == "messages"


def test_strict_max_tokens_refuses_as_openai_does(llm):
    with serve(llm, strict_max_tokens=True) as base:
        for path, body, field in (
            (
                "/v1/chat/completions",
                {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 131072},
                "max_tokens",
            ),
            (
                "/v1/chat/completions",
                {"messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 131072},
                "max_completion_tokens",
            ),
            ("/v1/responses", {"input": "Hi", "max_output_tokens": 131072}, "max_output_tokens"),
        ):
            r = httpx.post(base + path, json={"model": MODEL, **body})
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["code"] == "context_length_exceeded" and err["param"] == field
            assert f"maximum context length is {CONTEXT} tokens" in err["message"]
        ok = httpx.post(
            base + "/v1/chat/completions",
            timeout=60,
            json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        )
        assert ok.status_code == 200
