"""Prefix caching through the server: usage reports exactly the prompt tokens reused, a conversation's next
turn reuses its earlier turns (Chat Completions and Responses' previous_response_id), /metrics has the hit
rate — and a request of another API key reuses nothing (the cache is a timing side channel), unless the
operator shares the cache."""

import httpx
import pytest
from openai import OpenAI

from tests.server.conftest import serve

BLOCK = 16  # the engine's block size
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]


def chat(client, messages=MESSAGES, **kw):
    return client.chat.completions.create(
        model="gpt-oss", messages=messages, max_tokens=kw.pop("max_tokens", 4), temperature=0, **kw
    )


def prompt_len(base, key, messages=MESSAGES):
    r = httpx.post(
        base + "/tokenize", json={"model": "gpt-oss", "messages": messages}, headers={"Authorization": f"Bearer {key}"}
    )
    return r.json()["count"]


@pytest.fixture(scope="module")
def keyed(tiny_llm):
    with serve(tiny_llm(max_batch=2), api_keys=["alice-key", "bob-key"]) as base:
        yield base


def test_the_same_prompt_again_reports_every_whole_block_but_the_last_token_cached(keyed):
    alice = OpenAI(base_url=keyed + "/v1", api_key="alice-key", max_retries=0)
    n = prompt_len(keyed, "alice-key")
    first = chat(alice)
    second = chat(alice)
    assert first.usage.prompt_tokens == second.usage.prompt_tokens == n
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == (n - 1) // BLOCK * BLOCK > 0


def test_another_key_reuses_nothing_of_a_cached_prompt(keyed):
    alice = OpenAI(base_url=keyed + "/v1", api_key="alice-key", max_retries=0)
    bob = OpenAI(base_url=keyed + "/v1", api_key="bob-key", max_retries=0)
    messages = [{"role": "user", "content": "A secret only alice has typed so far."}]
    chat(alice, messages)
    assert chat(alice, messages).usage.prompt_tokens_details.cached_tokens > 0
    assert chat(bob, messages).usage.prompt_tokens_details.cached_tokens == 0
    line = next(
        row
        for row in httpx.get(keyed + "/metrics", headers={"Authorization": "Bearer bob-key"}).text.splitlines()
        if row.startswith("gptoss_prefix_cache_hit_rate ")
    )
    assert 0 < float(line.split()[1]) < 1


def test_a_shared_cache_is_an_operator_opt_in(tiny_llm):
    with serve(tiny_llm(max_batch=1), api_keys=["k1", "k2"], share_prefix_cache=True) as base:
        one = OpenAI(base_url=base + "/v1", api_key="k1", max_retries=0)
        two = OpenAI(base_url=base + "/v1", api_key="k2", max_retries=0)
        chat(one)
        assert chat(two).usage.prompt_tokens_details.cached_tokens == (prompt_len(base, "k1") - 1) // BLOCK * BLOCK


def test_the_next_chat_turn_reuses_the_earlier_ones(keyed):
    alice = OpenAI(base_url=keyed + "/v1", api_key="alice-key", max_retries=0)
    first = chat(alice, max_tokens=24)
    turn = MESSAGES + [
        {"role": "assistant", "content": first.choices[0].message.content or ""},
        {"role": "user", "content": "Another."},
    ]
    second = chat(alice, turn)
    cached = second.usage.prompt_tokens_details.cached_tokens
    # at least the first prompt's whole blocks (Harmony drops the finished turn's analysis, so the shared
    # part may end where the first answer's reasoning began); never the last token, always whole blocks
    assert (prompt_len(keyed, "alice-key") - 1) // BLOCK * BLOCK <= cached < second.usage.prompt_tokens
    assert cached % BLOCK == 0


def test_previous_response_id_reuses_the_stored_turn(keyed):
    alice = OpenAI(base_url=keyed + "/v1", api_key="alice-key", max_retries=0)
    first = alice.responses.create(model="gpt-oss", input="Tell me about koalas.", max_output_tokens=16)
    second = alice.responses.create(model="gpt-oss", previous_response_id=first.id, input="More.", max_output_tokens=8)
    details = second.usage.input_tokens_details
    assert first.usage.input_tokens // BLOCK * BLOCK - BLOCK <= details.cached_tokens < second.usage.input_tokens
    assert details.cached_tokens % BLOCK == 0 and details.cached_tokens > 0
