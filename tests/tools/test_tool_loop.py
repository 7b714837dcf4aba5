"""End to end on a synthetic checkpoint: a logits processor forces the model's tokens (a tool call, then
an answer), the loop runs the tool and feeds its result into the next turn."""

import asyncio
import json
import os
import signal
import sys
import threading

import pytest

from gptoss.conversation import ChatSession, ChatSettings
from gptoss.conversation.session import FORCE_TURNS_ENV, TurnResult, forced_turns_factory
from gptoss.conversation.tool_loop import (
    FunctionCallRequested,
    LoopFinished,
    ToolCallFinished,
    ToolCallStarted,
    ToolLoop,
    TurnDelta,
)
from gptoss.harmony import Message, Role, ToolDescription
from gptoss.tokenizer import Tokenizer
from gptoss.tools import Toolbox
from gptoss.tools.base import Tool
from gptoss.tools.browser import BrowserTool, LocalCorpus
from gptoss.tools.functions import FunctionsTool
from gptoss.tools.python import PythonTool

PYTHON_CALL = "<|channel|>analysis to=python code<|message|>print(6*7)<|call|>"
ANSWER = "<|channel|>final<|message|>The answer is 42.<|return|>"
TOOL_MESSAGE = "<|start|>python to=assistant<|channel|>analysis<|message|>42<|end|>"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from gptoss.model import ModelConfig
    from gptoss.model.synthetic import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("loop") / "tiny", ModelConfig.preset("tiny"), seed=8)


@pytest.fixture(scope="module")
def llm(ckpt, tokenizer):
    from gptoss.engine import LLM

    return LLM(ckpt, max_batch=1, max_model_len=4096, tokenizer=tokenizer)


def recording(turns, tokenizer, prompts):
    """The forcing factory, also recording the prompt of every turn."""
    force = forced_turns_factory(turns, tokenizer)

    def factory(session):
        prompts.append(tokenizer.decode(session.prompt_tokens()))
        return force(session)

    return factory


def test_python_call_runs_and_its_result_feeds_the_next_turn(llm, tokenizer):
    prompts = []
    toolbox = Toolbox([PythonTool(timeout=30)])
    session = ChatSession(
        llm,
        ChatSettings(max_tokens=64, seed=1),
        tools=toolbox,
        logits_processors_factory=recording([PYTHON_CALL, ANSWER], tokenizer, prompts),
    )
    loop = ToolLoop(toolbox)
    hits, cached = llm.engine.prefix_hits, llm.engine.cached_tokens
    try:
        events = list(loop.stream(session, "What is 6*7?"))
    finally:
        loop.close()
    kinds = [type(e).__name__ for e in events if not isinstance(e, TurnDelta)]
    assert kinds == ["ToolCallStarted", "ToolCallFinished", "LoopFinished"]
    # the step after the call reused the KV of the first one (its prompt, at least, in whole blocks)
    first_prompt = len(tokenizer.encoding.encode(prompts[0], allowed_special="all"))
    assert llm.engine.prefix_hits > hits
    assert llm.engine.cached_tokens - cached >= (first_prompt - 1) // 16 * 16 > 0
    started, finished, done = [e for e in events if not isinstance(e, TurnDelta)]
    assert (
        started.recipient == "python"
        and started.kind == "code_interpreter"
        and started.details == {"code": "print(6*7)"}
    )
    assert finished.output == "42" and finished.status == "completed" and finished.call_id == started.call_id
    assert finished.metadata["outputs"] == [{"type": "logs", "logs": "42"}]
    assert done.reason == "stop" and done.tool_calls == 1
    # the code streamed as the model wrote it, addressed to python
    assert "".join(e.text for e in events if isinstance(e, TurnDelta) and e.recipient == "python") == "print(6*7)"
    # the system message told the model about the tool; the second prompt carries its result
    assert "# Tools\n\n## python\n\nUse this tool to execute Python code in your chain of thought." in prompts[0]
    assert "time out after 30.0 seconds" in prompts[0]
    # (the call re-rendered the canonical way openai-harmony renders it: recipient before channel)
    assert prompts[1].endswith(
        "<|start|>assistant to=python<|channel|>analysis code<|message|>print(6*7)<|call|>"
        + TOOL_MESSAGE
        + "<|start|>assistant"
    )
    assert session.last.final_text == "The answer is 42."
    roles = [(m.author.role, m.author.name) for m in session.history]
    assert roles == [(Role.USER, None), (Role.ASSISTANT, None), (Role.TOOL, "python"), (Role.ASSISTANT, None)]


def test_async_loop_with_the_browser_and_citations(llm, tokenizer, tmp_path):
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    (corpus_dir / "pandas.md").write_text("# Giant panda\n\nGiant pandas eat bamboo almost exclusively.\n")
    (corpus_dir / "koala.md").write_text("# Koala\n\nKoalas eat eucalyptus leaves.\n")
    corpus = LocalCorpus(corpus_dir, index_path=tmp_path / "index.sqlite", progress=False)
    toolbox = Toolbox([BrowserTool(corpus)])
    turns = [
        '<|channel|>analysis to=browser.search code<|message|>{"query": "panda bamboo"}<|call|>',
        '<|channel|>analysis to=browser.open code<|message|>{"id": 0}<|call|>',
        "<|channel|>final<|message|>Pandas eat bamboo【1†L2】.<|return|>",
    ]
    prompts = []
    session = ChatSession(
        llm,
        ChatSettings(max_tokens=64, seed=1),
        tools=toolbox,
        logits_processors_factory=recording(turns, tokenizer, prompts),
    )

    async def go():
        return [e async for e in ToolLoop(toolbox).astream(session, "What do pandas eat?")]

    events = asyncio.run(go())
    calls = [e for e in events if isinstance(e, ToolCallStarted)]
    assert [c.details["action"]["type"] for c in calls] == ["search", "open_page"]
    assert calls[0].kind == "web_search" and calls[0].details["action"]["query"] == "panda bamboo"
    url = (corpus_dir / "pandas.md").as_uri()
    assert calls[1].details["action"]["url"] == url
    results = [e for e in events if isinstance(e, ToolCallFinished)]
    assert results[0].output.startswith("[0] panda bamboo\n") and "【0†Giant panda】" in results[0].output
    assert results[1].output.startswith(f"[1] Giant panda ({url})")
    assert "<|start|>browser.search to=assistant<|channel|>analysis<|message|>[0] panda bamboo" in prompts[1]
    assert "# Tools\n\n## browser\n\n// Tool for browsing." in prompts[0]
    assert isinstance(events[-1], LoopFinished) and events[-1].tool_calls == 2
    text, annotations = toolbox.cite(session.last.final_text)
    assert annotations == [
        {
            "type": "url_citation",
            "start_index": 17,
            "end_index": 17 + len(f" ([pandas.md]({url})) "),
            "url": url,
            "title": "Giant panda",
        }
    ]
    assert text == f"Pandas eat bamboo ([pandas.md]({url})) ."


def test_functions_run_here_or_are_returned_to_the_caller(llm, tokenizer, tmp_path):
    call = '<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>{"zone": "UTC"}<|call|>'
    # declared only (an API): the call is handed back
    declared = Toolbox(
        [
            FunctionsTool.declared(
                [
                    ToolDescription.new(
                        "get_time", "The time.", {"type": "object", "properties": {"zone": {"type": "string"}}}
                    )
                ]
            )
        ]
    )
    session = ChatSession(
        llm,
        ChatSettings(max_tokens=64, seed=1),
        tools=declared,
        logits_processors_factory=forced_turns_factory([call], tokenizer),
    )
    events = [e for e in ToolLoop(declared).stream(session, "Time?") if not isinstance(e, TurnDelta)]
    assert isinstance(events[0], FunctionCallRequested) and events[0].name == "get_time"
    assert json.loads(events[0].arguments) == {"zone": "UTC"}
    assert isinstance(events[1], LoopFinished) and events[1].reason == "function_call"
    assert "namespace functions {" in tokenizer.decode(session.prompt_tokens())
    # implemented in a module (gptoss chat --functions): it runs and the answer goes on
    module = tmp_path / "fns.py"
    module.write_text("def get_time(zone: str = 'UTC') -> str:\n    '''The time.'''\n    return f'12:00 {zone}'\n")
    toolbox = Toolbox([FunctionsTool.from_module(module)])
    prompts = []
    session = ChatSession(
        llm,
        ChatSettings(max_tokens=64, seed=1),
        tools=toolbox,
        logits_processors_factory=recording([call, "<|channel|>final<|message|>Noon.<|return|>"], tokenizer, prompts),
    )
    events = [e for e in ToolLoop(toolbox).stream(session, "Time?") if not isinstance(e, TurnDelta)]
    assert [type(e).__name__ for e in events] == ["ToolCallStarted", "ToolCallFinished", "LoopFinished"]
    assert events[1].output == "12:00 UTC" and events[0].kind == "function"
    assert "<|start|>functions.get_time to=assistant<|channel|>commentary<|message|>12:00 UTC<|end|>" in prompts[1]


def test_the_number_of_tool_calls_is_bounded(llm, tokenizer):
    toolbox = Toolbox([PythonTool(timeout=30)])
    session = ChatSession(
        llm,
        ChatSettings(max_tokens=64, seed=1),
        tools=toolbox,
        logits_processors_factory=forced_turns_factory([PYTHON_CALL] * 3, tokenizer),
    )
    loop = ToolLoop(toolbox, max_tool_calls=1)
    try:
        events = [e for e in loop.stream(session, "Loop forever") if not isinstance(e, TurnDelta)]
    finally:
        loop.close()
    assert [type(e).__name__ for e in events] == ["ToolCallStarted", "ToolCallFinished", "LoopFinished"]
    assert events[-1].reason == "max_tool_calls" and events[-1].tool_calls == 1
    last = session.history[-1]
    assert last.author.role is Role.TOOL and "limit of 1 tool calls" in last.text


def test_unknown_tool_is_answered_with_an_error(llm, tokenizer):
    toolbox = Toolbox()
    turns = ["<|channel|>commentary to=functions.missing <|constrain|>json<|message|>{}<|call|>", ANSWER]
    session = ChatSession(
        llm,
        ChatSettings(max_tokens=64, seed=1),
        tools=toolbox,
        logits_processors_factory=forced_turns_factory(turns, tokenizer),
    )
    loop = ToolLoop(toolbox)
    try:
        events = [e for e in loop.stream(session, "?") if not isinstance(e, TurnDelta)]
    finally:
        loop.close()
    assert (
        events[1].status == "failed"
        and "there is no tool 'functions.missing' (tools available: none)" in events[1].output
    )
    assert events[-1].reason == "stop" and session.last.final_text == "The answer is 42."


def test_gptoss_chat_runs_a_python_call(ckpt, tmp_path):
    import os

    import pexpect  # a test dependency

    env = dict(os.environ, **{FORCE_TURNS_ENV: json.dumps([PYTHON_CALL, ANSWER])})
    child = pexpect.spawn(
        sys.executable,
        ["-m", "gptoss", "chat", "--model", str(ckpt), "--seed", "1", "--tools", "python", "--max-tokens", "64"],
        encoding="utf-8",
        timeout=120,
        dimensions=(40, 200),
        env=env,
    )
    child.expect(">>> ")
    child.sendline("What is 6*7?")
    child.expect(">>> ")
    shown = child.before
    assert "[python]" in shown and "print(6*7)" in shown
    assert "42" in shown.split("print(6*7)", 1)[1]
    assert "The answer is 42." in shown
    path = tmp_path / "transcript.json"
    child.sendline(f"/save {path}")
    child.expect(">>> ")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    messages = json.loads(path.read_text())["messages"]
    tool = [m for m in messages if m["role"] == "tool"]
    assert tool == [
        {
            "role": "tool",
            "name": "python",
            "content": [{"type": "text", "text": "42"}],
            "channel": "analysis",
            "recipient": "assistant",
        }
    ]
    call = next(m for m in messages if m.get("recipient") == "python")
    assert call["content"][0]["text"] == "print(6*7)" and call["content_type"] == "code"
    assert messages[0]["content"][0]["tools"]["python"]["name"] == "python"


def test_gptoss_chat_rejects_unknown_tools(ckpt, tmp_path, monkeypatch):
    import argparse
    import subprocess

    from gptoss.cli.chat import _make_tools
    from gptoss.errors import GptossError

    r = subprocess.run(
        [sys.executable, "-m", "gptoss", "chat", "--model", str(ckpt), "--tools", "shell"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode != 0 and "unknown tool 'shell'" in r.stderr and "Traceback" not in r.stderr

    def args(**kw):
        base = {"tools": "", "functions": None, "corpus": None, "max_tool_calls": 16, "browser_allow_hosts": None}
        return argparse.Namespace(**{**base, **kw})

    assert _make_tools(args()) == (None, None)
    with pytest.raises(GptossError, match="add --tools browser"):
        _make_tools(args(corpus=str(tmp_path)))
    with pytest.raises(GptossError, match="--max-tool-calls"):
        _make_tools(args(tools="browser", max_tool_calls=-1))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "a.md").write_text("# A\n\nalpha")
    toolbox, loop = _make_tools(args(tools="browser", corpus=str(tmp_path), max_tool_calls=3))
    assert list(toolbox.tools) == ["browser"] and loop.max_tool_calls == 3


class _SlowTool(Tool):
    """A tool whose calls never finish on their own."""

    name = "slow"

    def namespace(self):
        raise NotImplementedError  # not shown to any model here

    async def run(self, call):
        await asyncio.sleep(3600)


class _ScriptedSession:
    """What the loop's drivers use of a ChatSession, with one scripted turn: a call to the slow tool."""

    def __init__(self):
        self.history = []
        self.last = None

    def continue_turn(self):
        call = Message.from_role_and_content(Role.ASSISTANT, "{}").with_recipient("slow").with_channel("commentary")
        self.history.append(call)
        self.last = TurnResult([call], "stop", 1, [], stop_token=Tokenizer.CALL)
        yield TurnDelta("commentary", "slow", "{}")


def test_ctrl_c_during_a_call_cancels_it_and_answers_it_as_interrupted():
    loop = ToolLoop(Toolbox([_SlowTool()]))
    session = _ScriptedSession()
    events = loop.stream(session, "Wait")
    seen = []
    # Python's own Ctrl-C handler, also where the suite was started with SIGINT ignored (a background job):
    # there a SIGINT would be dropped and the call would wait forever
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            for event in events:
                seen.append(event)
                if isinstance(event, ToolCallStarted):
                    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()  # Ctrl-C while the call runs
    finally:
        signal.signal(signal.SIGINT, previous)
        loop.close()
    assert [type(e).__name__ for e in seen] == ["TurnDelta", "ToolCallStarted"]
    roles = [(m.author.role, m.author.name) for m in session.history]
    assert roles == [(Role.USER, None), (Role.ASSISTANT, None), (Role.TOOL, "slow")]
    assert session.history[-1].text == "Error: the call was interrupted before it finished."


def test_a_task_cancelled_during_a_call_leaves_the_call_answered_as_interrupted():
    session = _ScriptedSession()

    async def go():
        started = asyncio.Event()

        async def consume():
            async for event in ToolLoop(Toolbox([_SlowTool()])).astream(session, "Wait"):
                if isinstance(event, ToolCallStarted):
                    started.set()

        task = asyncio.ensure_future(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert session.history[-1].author.name == "slow"
    assert session.history[-1].text == "Error: the call was interrupted before it finished."
