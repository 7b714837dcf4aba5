"""The tiny synthetic model (random weights) as the guard: decoded under the verdict grammar, every verdict
parses and follows the schema, at every reasoning effort; and gptoss serve can use the served model itself."""

from __future__ import annotations

import asyncio
import json

import httpx
import jsonschema
import pytest

from gptoss.guard import GuardSettings, parse_verdict
from gptoss.guard.backends import LocalGuard
from gptoss.guard.policy import parse_policy
from gptoss.guard.verdict import verdict_schema
from tests.server.conftest import serve

POLICIES = [
    parse_policy(
        "---\nname: violence\ncategories: V1, V2, V3\n---\n# Violence\nV1: threats. V2: instructions. "
        "V3: praise of attacks.\n",
        "violence.md",
        "violence",
    ),
    parse_policy("# Spam\nUnsolicited advertising violates this policy.\n", "spam.md", "spam", "flag"),
]
CONTENTS = ["Buy cheap watches now!!!", "How do I bake bread?"]


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_every_verdict_parses_under_the_grammar(tiny_llm, effort):
    from gptoss.engine.async_engine import AsyncEngine

    llm = tiny_llm(max_batch=4)
    engine = AsyncEngine(llm.engine)
    backend = LocalGuard(
        engine, llm.tokenizer, effort, reasoning_max_tokens=6, rationale_max=16, max_model_len=llm.max_model_len
    )

    async def run():
        replies = await asyncio.gather(*(backend.classify(p, c) for p in POLICIES for c in CONTENTS))
        return replies

    try:
        replies = asyncio.run(run())
    finally:
        engine.shutdown()
    for (policy, _), reply in zip([(p, c) for p in POLICIES for c in CONTENTS], replies):
        assert reply.finish_reason == "stop", reply
        jsonschema.validate(json.loads(reply.text), verdict_schema(policy, 16))
        verdict = parse_verdict(reply.text)
        assert verdict.category is None or not policy.categories or verdict.category in policy.categories


def test_effort_reaches_the_guard_prompt(tiny_llm):
    llm = tiny_llm(max_batch=1)
    prompts = {
        e: llm.tokenizer.decode(LocalGuard(None, llm.tokenizer, e).prompt_ids(POLICIES[0], "x")[0])
        for e in ("low", "high")
    }
    assert "Reasoning: low" in prompts["low"] and "Reasoning: high" in prompts["high"]
    assert "# Violence" in prompts["low"] and '"violation"' in prompts["low"]


def test_the_guard_tokenizes_big_content_off_the_event_loop(tokenizer, monkeypatch):
    """Content of 40,000 characters to check: its tokenization is held in progress, and the event loop
    keeps running meanwhile (inline, the loop would wait for the tokenizer: the release would time out)."""
    import threading

    from gptoss.errors import GptossError

    entered, release, released = threading.Event(), threading.Event(), []
    encode = tokenizer.encode

    def held(text):
        if "HOLD-THIS-ONE" in text:
            entered.set()
            released.append(release.wait(5))
        return encode(text)

    monkeypatch.setattr(tokenizer, "encode", held)
    guard = LocalGuard(None, tokenizer, max_model_len=16)

    async def main():
        task = asyncio.ensure_future(guard.classify(POLICIES[0], "HOLD-THIS-ONE" + " " * 40_000))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        for _ in range(5):
            await asyncio.sleep(0.01)  # the loop runs while the tokenizer is held
        release.set()
        with pytest.raises(GptossError, match="does not fit the guard model's context"):
            await task

    asyncio.run(main())
    assert released == [True]


def test_serve_uses_the_served_model_as_guard(tiny_llm, tmp_path):
    s = GuardSettings(
        policies=POLICIES, audit_path=str(tmp_path / "audit.sqlite"), reasoning_max_tokens=4, rationale_max_chars=12
    )
    with serve(tiny_llm(max_batch=4), guard=s) as base:
        r = httpx.post(
            base + "/v1/chat/completions",
            json={"model": "gpt-oss", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        from gptoss.guard.audit import AuditLog

        records = AuditLog(tmp_path / "audit.sqlite").records(r.json()["id"])
    assert {x.policy for x in records} == {"violence", "spam"}
    assert all(x.error is None and x.violation is not None for x in records), [x.error for x in records]
    expected = "content_filter" if any(x.action == "block" for x in records) else None
    if expected:
        assert r.json()["choices"][0]["finish_reason"] == expected
