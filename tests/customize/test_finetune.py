"""``gptoss finetune``: conversations rendered with gptoss's Harmony renderer exactly as the server renders
a request (loss only on what the model writes), trained by TRL + PEFT on a tiny model until the loss goes
down, and the adapter it writes served by gptoss as PEFT runs it."""

import json

import pytest
import torch

from gptoss.cli.main import main
from gptoss.conversation.openai_chat import ServerPersona, chat_prompt
from gptoss.finetune.data import DataError, build_examples, harmony_messages, render_example
from gptoss.tokenizer import Tokenizer

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TOOL_CONVERSATION = {
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "thinking": "Use the tool.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 21}'},
        {"role": "assistant", "thinking": "It is mild.", "content": "21 degrees."},
    ],
    "tools": [WEATHER],
    "conversation_start_date": "2025-06-28",
}


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load()


def test_training_tokens_are_the_served_prompt_followed_by_the_answer(tok):
    record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "thinking": "Add.", "content": "4"},
        ],
        "conversation_start_date": "2025-06-28",
    }
    example = render_example(harmony_messages(record), tok)
    # what the server would prompt with for the same request (same system message, same date)
    served = harmony_messages({**record, "messages": record["messages"][:2] + [{"role": "assistant", "content": "x"}]})[
        :-1
    ]
    from gptoss.harmony.render import render_conversation_for_completion

    prompt = render_conversation_for_completion(served, "assistant", tokenizer=tok)
    assert example.input_ids[: len(prompt)] == prompt
    assert example.assistant_masks[: len(prompt)] == [0] * len(prompt)
    answer = tok.decode(example.input_ids[len(prompt) :])
    assert answer == "<|channel|>analysis<|message|>Add.<|end|><|start|>assistant<|channel|>final<|message|>4<|return|>"
    assert example.assistant_masks[len(prompt) :] == [1] * (len(example.input_ids) - len(prompt))


def test_tool_calls_are_learned_and_tool_output_is_not(tok):
    example = render_example(harmony_messages(TOOL_CONVERSATION), tok)
    learned = tok.decode([t for t, m in zip(example.input_ids, example.assistant_masks) if m])
    assert (
        ' to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{"city": "Paris"}<|call|>'
        in learned
    )
    assert "temp" not in learned and "Weather in Paris" not in learned
    assert learned.endswith("<|channel|>final<|message|>21 degrees.<|return|>")
    assert "Use the tool." in learned and "It is mild." in learned  # the turn's reasoning, each step of it
    # and the system message is the server's own, with the record's date
    persona_system = ServerPersona().system_message(None).content[0].with_conversation_start_date("2025-06-28")
    assert harmony_messages(TOOL_CONVERSATION)[0].content[0] == persona_system
    assert chat_prompt  # the conversion is the server's function (imported by gptoss.finetune.data)


def test_only_the_last_turn_is_learned_and_its_history_renders_as_served(tok):
    from gptoss.harmony.render import render_conversation_for_completion

    turns = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "thinking": "Old.", "content": "Hello"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "thinking": "New.", "content": "Ciao"},
    ]
    record = {"messages": turns, "conversation_start_date": "2025-06-28"}
    example = render_example(harmony_messages(record), tok)
    served = render_conversation_for_completion(
        harmony_messages({**record, "messages": turns[:3] + [turns[1]]})[:-2], "assistant", tokenizer=tok
    )
    assert example.input_ids[: len(served)] == served and "Old." not in tok.decode(served)
    learned = tok.decode([t for t, m in zip(example.input_ids, example.assistant_masks) if m])
    assert (
        learned
        == "<|channel|>analysis<|message|>New.<|end|><|start|>assistant<|channel|>final<|message|>Ciao<|return|>"
    )


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", r"data\.jsonl:2: not valid JSON"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', r"data\.jsonl:2: no assistant message to learn from"),
        (
            '{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}',
            r"data\.jsonl:2: messages\[0\]\.role: expected system, developer, user, assistant or tool",
        ),
        ('{"text": "hi"}', r"data\.jsonl:2: expected an object with a non-empty 'messages' list"),
    ],
)
def test_bad_training_data_is_named_by_line(tmp_path, tok, line, message):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(TOOL_CONVERSATION) + "\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        build_examples(path, tok)


@pytest.mark.slow
def test_finetune_lowers_the_loss_and_its_adapter_is_served(tmp_path, dense_checkpoint, capsys):
    from peft import PeftModel

    from gptoss.engine import LLM, SamplingParams
    from gptoss.model import Transformer
    from tests.customize.conftest import hf_model, rel_err

    data = tmp_path / "data.jsonl"
    # one short conversation (the 201,088-word unembedding makes every token costly on a CPU)
    data.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "thinking": "Greet.", "content": "Hello!"},
                ]
            }
        )
        + "\n"
    )
    out = tmp_path / "adapter"
    assert (
        main(
            [
                "finetune",
                "--model",
                str(dense_checkpoint),
                "--data",
                str(data),
                "--out",
                str(out),
                "--rank",
                "4",
                "--learning-rate",
                "0.05",
                "--max-steps",
                "3",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)  # stdout holds the report alone
    assert report["steps"] == 3 and len(report["losses"]) == 3
    assert report["losses"][-1] < 0.9 * report["losses"][0]
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    # served by gptoss as PEFT runs it
    tokens = torch.arange(100, 130)
    model = Transformer.from_checkpoint(dense_checkpoint, dtype=torch.float32)
    llm = LLM(model, max_batch=1, lora={"ft": out})
    with model.lora.active([(1, tokens.numel())]):
        got = model(tokens)
    with torch.no_grad():
        want = PeftModel.from_pretrained(hf_model(dense_checkpoint), out).eval()(tokens[None]).logits[0]
    assert rel_err(got, want) < 1e-4
    assert llm.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=3, lora="ft"))[0].finish_reason
