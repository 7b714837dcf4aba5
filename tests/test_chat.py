"""`gptoss chat` and the session under it, on a synthetic checkpoint."""

import json
import sys

import pytest

from gptoss.harmony import Message, Role


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from gptoss.model import ModelConfig
    from gptoss.model.synthetic import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("chat") / "tiny", ModelConfig.preset("tiny"), seed=8)


def test_session_renders_effort_developer_and_history(ckpt, tokenizer):
    from gptoss.conversation import ChatSession, ChatSettings
    from gptoss.engine import LLM

    llm = LLM(ckpt, max_batch=1, max_model_len=2048, tokenizer=tokenizer)
    session = ChatSession(
        llm, ChatSettings(reasoning_effort="high", developer="Answer in French.", max_tokens=12, seed=3)
    )
    deltas = list(session.send("What is 2+2?"))
    text = tokenizer.decode(session.prompt_tokens())
    assert "Reasoning: high" in text
    assert "<|start|>developer<|message|># Instructions\n\nAnswer in French.<|end|>" in text
    assert "<|start|>user<|message|>What is 2+2?<|end|>" in text
    assert text.endswith("<|start|>assistant")
    assert session.last.num_tokens == 12 and session.last.finish_reason == "length"
    assert all(d.text for d in deltas)
    # earlier reasoning is dropped from the prompt once a final answer follows
    session.history[1:] = [
        Message.from_role_and_content(Role.ASSISTANT, "thinking hard").with_channel("analysis"),
        Message.from_role_and_content(Role.ASSISTANT, "4").with_channel("final"),
        Message.from_role_and_content(Role.USER, "and 3+3?"),
    ]
    text = tokenizer.decode(session.prompt_tokens())
    assert "thinking hard" not in text and "<|channel|>final<|message|>4<|end|>" in text
    session.reset()
    assert session.history == []


def test_the_next_chat_turn_reuses_the_kv_of_the_earlier_ones(ckpt, tokenizer):
    from gptoss.conversation import ChatSession, ChatSettings
    from gptoss.engine import LLM

    llm = LLM(ckpt, max_batch=1, max_model_len=2048, tokenizer=tokenizer)
    session = ChatSession(llm, ChatSettings(max_tokens=12, seed=3, constrained=False))
    list(session.send("What is 2+2?"))
    engine = llm.engine
    first_prompt, before = engine.prompt_tokens, engine.cached_tokens
    list(session.send("And 3+3?"))
    reused = engine.cached_tokens - before
    # the whole first prompt (its whole blocks) comes from the cache; the re-rendered answer may add more
    assert reused >= (first_prompt - 1) // 16 * 16 > 0 and reused % 16 == 0


def spawn_chat(ckpt, *extra):
    import pexpect  # a test dependency

    child = pexpect.spawn(
        sys.executable,
        ["-m", "gptoss", "chat", "--model", str(ckpt), "--seed", "1", *extra],
        encoding="utf-8",
        timeout=120,
        dimensions=(40, 200),
    )
    child.expect(">>> ")
    return child


def test_chat_in_a_terminal_turn_reset_save(ckpt, tmp_path):
    child = spawn_chat(ckpt, "--max-tokens", "8", "--reasoning-effort", "low")
    assert "SYNTHETIC DEMO CHECKPOINT" in child.before
    child.sendline("Hello there")
    child.expect(">>> ")
    # decoded under the Harmony grammar, even random weights give a final answer, streamed
    lines = [line for line in child.before.splitlines() if line.strip()]
    assert lines[0] == "Hello there" and len(lines) >= 2 and "<|" not in child.before
    child.sendline("/effort high")
    child.expect(">>> ")
    assert "reasoning effort: high" in child.before
    path = tmp_path / "transcript.json"
    child.sendline(f"/save {path}")
    child.expect(">>> ")
    saved = json.loads(path.read_text())
    roles = [m["role"] for m in saved["messages"]]
    assert roles[:2] == ["system", "user"] and roles[2:] and set(roles[2:]) <= {"assistant", "tool", "user"}
    assert saved["messages"][0]["content"][0]["reasoning_effort"] == "High"
    child.sendline("/reset")
    child.expect(">>> ")
    child.sendline(f"/save {path}")
    child.expect(">>> ")
    assert [m["role"] for m in json.loads(path.read_text())["messages"]] == ["system"]
    child.sendline("/bogus")
    child.expect(">>> ")
    assert "unknown command /bogus" in child.before
    child.sendeof()
    child.expect(pexpect_eof())
    child.close()
    assert child.exitstatus == 0


def pexpect_eof():
    import pexpect

    return pexpect.EOF


def test_ctrl_c_stops_the_answer_not_the_session(ckpt):
    child = spawn_chat(ckpt, "--max-tokens", "100000")
    child.sendline("Tell me a very long story")
    # Interrupt as soon as the turn has visibly begun (the thinking indicator is its first output): a fixed
    # sleep let a fast CPU path finish a turn the random model happened to end early.
    child.expect("thinking")
    child.sendintr()
    child.expect(r"\(stopped\)")
    child.expect(">>> ")
    child.sendline("/quit")
    child.expect(pexpect_eof())
    child.close()
    assert child.exitstatus == 0
