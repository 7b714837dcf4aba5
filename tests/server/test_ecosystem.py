"""Software nobody here wrote, run unchanged against gptoss serve on a synthetic checkpoint:
lm-evaluation-harness 0.4.13 (local-completions loglikelihood, local-chat-completions generation), and the
requests of OpenAI's gpt-oss eval harness (``python -m gpt_oss.evals``: its package needs Python >= 3.12, so
its two samplers' exact calls are replayed here)."""

from __future__ import annotations

import json

import pytest
import torch
from openai import OpenAI

from tests.server.conftest import serve

CONTEXT = 256
MODEL = "gpt-oss-20b"
DOCS = [
    {"question": "What color is the sky?", "choices": [" blue", " green", " red"], "answer": 0},
    {"question": "How many legs has a cat?", "choices": [" two", " four"], "answer": 1},
]


@pytest.fixture(scope="module")
def llm(tiny_llm):
    return tiny_llm(max_batch=4, max_model_len=CONTEXT)


@pytest.fixture(scope="module")
def server(llm):
    from gptoss.conversation.openai_chat import ServerPersona

    with serve(llm, model_name=MODEL, persona=ServerPersona(reasoning_max_tokens=4)) as base:
        yield base


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """Two tiny local lm-eval tasks over the same two questions: multiple choice (loglikelihood) and generation."""
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    common = (
        f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
    )
    (folder / "tiny_mc.yaml").write_text(
        "task: tiny_mc\noutput_type: multiple_choice\n"
        + common
        + 'doc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    (folder / "tiny_gen.yaml").write_text(
        "task: tiny_gen\noutput_type: generate_until\n"
        + common
        + 'doc_to_target: "{{choices[answer]}}"\ngeneration_kwargs:\n'
        '  until: ["\\n\\n"]\n  max_gen_toks: 8\n'
        "metric_list:\n  - metric: exact_match\n"
    )
    return folder


def evaluate(folder, **kw):
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        task_manager=TaskManager(include_path=str(folder), include_defaults=False), log_samples=True, **kw
    )


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("OPENAI_API_KEY", "unused")


def test_lm_eval_local_completions_loglikelihood_is_the_models_own(server, llm, tasks, tiny_ckpt):
    out = evaluate(
        tasks,
        model="local-completions",
        tasks=["tiny_mc"],
        model_args=f"model={MODEL},base_url={server}/v1/completions,tokenizer_backend=huggingface,"
        f"tokenizer={tiny_ckpt},num_concurrent=2",
    )
    assert out["results"]["tiny_mc"]["acc,none"] in (0.0, 0.5, 1.0)
    tok = llm.tokenizer
    scored = 0
    for sample in out["samples"]["tiny_mc"]:
        for (context, continuation), (logprob, greedy) in zip(sample["arguments"], [r[0] for r in sample["resps"]]):
            # (context, continuation) as lm-eval asked to score them
            ctx = tok.encode(context)
            cont = tok.encode(context + continuation)[len(ctx) :]  # lm-eval's split: the whole, then the context
            lp = torch.log_softmax(llm.model(torch.tensor(ctx + cont)).float(), dim=-1)
            want = sum(float(lp[len(ctx) + i - 1, t]) for i, t in enumerate(cont))
            assert abs(float(logprob) - want) < 1e-3, (continuation, logprob, want)
            assert bool(greedy) == all(int(lp[len(ctx) + i - 1].argmax()) == t for i, t in enumerate(cont))
            scored += 1
    assert scored == sum(len(d["choices"]) for d in DOCS)


def test_lm_eval_local_chat_completions_generates(server, tasks):
    out = evaluate(
        tasks,
        model="local-chat-completions",
        tasks=["tiny_gen"],
        apply_chat_template=True,
        model_args=f"model={MODEL},base_url={server}/v1/chat/completions",
    )
    samples = out["samples"]["tiny_gen"]
    assert len(samples) == 2 and all(isinstance(s["resps"][0][0], str) for s in samples)
    assert "exact_match,none" in out["results"]["tiny_gen"]


def test_gpt_oss_eval_samplers_requests_are_answered(server):
    """The two samplers of gpt-oss 0.0.9's ``python -m gpt_oss.evals`` (its basic eval: one "hi"), call for
    call: max_tokens=131072 on every request (above any context: clamped, not a 400, which the harness
    would score as an answer) and the reasoning read from ``message.reasoning``."""
    client = OpenAI(base_url=server + "/v1", timeout=24 * 60 * 60)
    messages = [{"role": "user", "content": "hi"}]
    chat = client.chat.completions.create(
        model=MODEL, messages=messages, reasoning_effort="low", temperature=1.0, max_tokens=131_072
    )  # ChatCompletionsSampler, reasoning_model=True
    choice = chat.choices[0]
    assert chat.usage.prompt_tokens + chat.usage.completion_tokens <= CONTEXT
    assert choice.finish_reason in ("stop", "length")
    assert getattr(choice.message, "reasoning", None) == getattr(choice.message, "reasoning_content", None)
    resp = client.responses.create(
        model=MODEL, input=messages, temperature=1.0, max_output_tokens=131_072, reasoning={"effort": "low"}
    )  # ResponsesSampler, reasoning_model=True
    assert resp.status in ("completed", "incomplete") and resp.reasoning.effort == "low"
    assert resp.usage.input_tokens + resp.usage.output_tokens <= CONTEXT
    assert isinstance(resp.output_text, str)
