"""Adapters served as their own model names beside the base (the official openai client on 127.0.0.1),
requests for different adapters in flight together answering as each alone; and ``gptoss generate --lora``."""

import asyncio
import json

import pytest
from openai import AsyncOpenAI, NotFoundError, OpenAI

from gptoss.cli.main import main
from gptoss.conversation.openai_chat import ServerPersona
from gptoss.engine import LLM, SamplingParams
from gptoss.model import Transformer
from tests.server.conftest import serve


@pytest.fixture(scope="module")
def server(adapters, mxfp4_checkpoint):
    llm = LLM(
        Transformer.from_checkpoint(mxfp4_checkpoint),
        max_batch=4,
        max_model_len=1024,
        lora={"attn-ft": adapters["attn"], "expert-ft": adapters["experts"]},
    )
    with serve(
        llm, model_name="gpt-oss", adapters=llm.model.lora.names, persona=ServerPersona(reasoning_max_tokens=4)
    ) as base:
        yield base


def _ask(model):
    return dict(model=model, messages=[{"role": "user", "content": "Hi"}], temperature=0, max_tokens=16, logprobs=True)


def _answer(completion):
    choice = completion.choices[0]
    return choice.message.model_dump(), [round(t.logprob, 4) for t in choice.logprobs.content or []]


def test_adapters_are_listed_and_answer_as_when_alone(server):
    client = OpenAI(base_url=server + "/v1", api_key="unused")
    listed = {m.id: getattr(m, "parent", None) for m in client.models.list().data}
    assert listed["attn-ft"] == "gpt-oss" and listed["expert-ft"] == "gpt-oss" and "gpt-oss" in listed
    names = ["gpt-oss", "attn-ft", "expert-ft"]
    alone = [_answer(client.chat.completions.create(**_ask(n))) for n in names]

    async def together():
        aclient = AsyncOpenAI(base_url=server + "/v1", api_key="unused")
        return await asyncio.gather(*(aclient.chat.completions.create(**_ask(n)) for n in names))

    assert [_answer(c) for c in asyncio.run(together())] == alone
    assert alone[0][1] and alone[0][1] != alone[1][1] and alone[0][1] != alone[2][1]  # each adapter: its own model
    with pytest.raises(NotFoundError, match="the LoRA adapters 'attn-ft', 'expert-ft'"):
        client.chat.completions.create(**_ask("other-ft"))


def test_generate_cli_applies_the_adapter(adapters, mxfp4_checkpoint, capsys):
    argv = [
        "generate",
        "--model",
        str(mxfp4_checkpoint),
        "--prompt-ids",
        "1,2,3,4,5",
        "--temperature",
        "0",
        "--max-tokens",
        "4",
        "--json",
        "--dtype",
        "float32",
    ]
    assert main(argv + ["--lora", str(adapters["experts"])]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["token_ids"]
    llm = LLM(Transformer.from_checkpoint(mxfp4_checkpoint), max_batch=1, lora={"e": adapters["experts"]})
    want = llm.generate([[1, 2, 3, 4, 5]], SamplingParams(temperature=0, max_tokens=4, lora="e"))[0].token_ids
    assert got == want
