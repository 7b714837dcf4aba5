"""A new user's first minutes: the synthetic demo `gptoss chat` and `gptoss serve` fall back to (quick, and
labelled random everywhere), one-line errors for common mistakes, a busy port, a fast torch-free --help."""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time

import httpx
import pytest


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory):
    """An environment whose default model is unreachable, with the demo checkpoint already written to its cache
    (as the first `gptoss chat` writes it)."""
    cache = tmp_path_factory.mktemp("gptoss-cache")
    env = dict(os.environ, GPTOSS_CACHE=str(cache), HF_HUB_OFFLINE="1", HF_HOME=str(cache / "hf"))
    old = os.environ.get("GPTOSS_CACHE")
    os.environ["GPTOSS_CACHE"] = str(cache)
    try:
        from gptoss.cli.common import ensure_demo_checkpoint

        ensure_demo_checkpoint()
    finally:
        if old is None:
            del os.environ["GPTOSS_CACHE"]
        else:
            os.environ["GPTOSS_CACHE"] = old
    return env


def test_demo_preset_is_small():
    from gptoss.model import ModelConfig

    config = ModelConfig.preset("demo")
    assert config.weight_bytes() < 64 * 2**20  # ~50 MB: written and loaded in seconds
    assert set(config.layer_types) == {"sliding_attention", "full_attention"} and config.sliding_window == 128


def test_chat_demo_shows_thinking_at_once_and_answers_within_30s(demo_env):
    import pexpect

    # the demo's own reasoning budget; a shorter answer than its default only to keep the test short
    child = pexpect.spawn(
        sys.executable,
        ["-m", "gptoss", "chat", "--seed", "0", "--max-tokens", "40"],
        env=demo_env,
        encoding="utf-8",
        timeout=180,
        dimensions=(40, 200),
    )
    try:
        child.expect(">>> ")
        assert "SYNTHETIC DEMO CHECKPOINT" in child.before and "demo settings: reasoning budget" in child.before
        child.sendline("What is 2+2?")
        asked = time.monotonic()
        child.expect("thinking", timeout=2)  # before the first token: the prompt's prefill can take seconds
        # the summary line replaces the indicator once hidden reasoning ends; the answer follows it
        child.expect(r"thought for \d+ tokens? in [\d.]+ s[^\n]*\n", timeout=30)
        child.expect(r"[^\s\x1b]", timeout=max(0.1, 30 - (time.monotonic() - asked)))
        first_answer = time.monotonic() - asked
        assert first_answer < 30
        child.expect(">>> ", timeout=120)
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_thinking_indicator_off_a_terminal_is_one_plain_line():
    import io

    from gptoss.cli.thinking import ThinkingIndicator

    count = [0]
    out = io.StringIO()
    indicator = ThinkingIndicator(out, lambda: count[0], live=False, interval=0.01)
    indicator.start()
    for _ in range(5):
        count[0] += 1
        time.sleep(0.02)
    assert indicator.stop() == 5
    text = out.getvalue()
    assert text.count("\n") == 1 and "\x1b" not in text and "\r" not in text
    assert re.fullmatch(r"\(thinking\.\.\. thought for 5 tokens in [\d.]+ s(, [\d.]+ tok/s)?\)\n", text), text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_served_demo_says_synthetic_everywhere(demo_env):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptoss", "serve", "--port", str(port), "--log-level", "warning"],
        env=demo_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                health = httpx.get(base + "/health", timeout=2)
                if health.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.time() < deadline, "the server did not start"
            time.sleep(0.2)
        assert "synthetic" in health.json()["model"] and health.json()["synthetic"] is True
        ids = [m["id"] for m in httpx.get(base + "/v1/models").json()["data"]]
        assert ids and all("synthetic" in i for i in ids)
        body = {"model": ids[0], "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "seed": 0}
        reply = httpx.post(base + "/v1/chat/completions", json=body, timeout=120)
        assert reply.status_code == 200 and "synthetic" in reply.json()["model"]
        # the real model's name is not an alias of the demo
        real = httpx.post(base + "/v1/chat/completions", json=dict(body, model="openai/gpt-oss-20b"), timeout=60)
        assert real.status_code == 404 and "synthetic" in real.json()["error"]["message"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    serving = [line for line in err.splitlines() if "serving" in line]
    assert len(serving) == 1 and "synthetic" in serving[0].lower() and "openai/gpt-oss-20b" not in serving[0]


def test_python_api_announces_a_synthetic_load(tmp_path):
    from gptoss.engine import LLM
    from gptoss.model import ModelConfig, Transformer
    from gptoss.model.synthetic import SyntheticCheckpointWarning, write_checkpoint

    folder = write_checkpoint(tmp_path / "tiny", ModelConfig.preset("tiny").replace(num_hidden_layers=1), seed=1)
    with pytest.warns(SyntheticCheckpointWarning, match="SYNTHETIC DEMO CHECKPOINT.*random weights"):
        model = Transformer.from_checkpoint(folder)
    assert model.synthetic
    with pytest.warns(SyntheticCheckpointWarning):
        llm = LLM(folder, max_batch=1, max_model_len=64)
    assert llm.is_synthetic


def one_line_error(capsys, argv) -> str:
    from gptoss.cli.main import main

    assert main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gptoss: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


@pytest.mark.parametrize("command", [["generate", "--prompt", "hi"], ["chat"], ["serve", "--port", "1"], ["bench"]])
def test_an_unusable_device_is_one_line(capsys, monkeypatch, tmp_path, command):
    import torch

    monkeypatch.setenv("GPTOSS_CACHE", str(tmp_path))
    if command[0] == "serve":
        command = ["serve", "--port", str(free_port())]
    line = one_line_error(capsys, command + ["--device", "tpu"])
    assert "device 'tpu'" in line and "cpu or cuda" in line
    cuda = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    line = one_line_error(capsys, command + ["--device", cuda])
    assert f"device '{cuda}'" in line and ("built without CUDA" in line or "GPU(s) present" in line)
    assert not any(tmp_path.iterdir())  # refused before the demo was written


def test_make_checkpoint_into_a_file_is_one_line(capsys, tmp_path):
    file = tmp_path / "taken"
    file.write_text("not a folder")
    line = one_line_error(capsys, ["make-checkpoint", "--out", str(file)])
    assert str(file) in line and "is a file, not a folder" in line
    line = one_line_error(capsys, ["make-checkpoint", "--out", str(file / "sub" / "ckpt")])
    assert f"under {file}, which is a file" in line


def test_logprobs_without_json_is_one_line(capsys):
    line = one_line_error(capsys, ["generate", "--prompt", "hi", "--logprobs", "3"])
    assert "--logprobs" in line and "--json" in line


def test_a_busy_port_fails_before_loading(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        env = dict(os.environ, GPTOSS_CACHE=str(tmp_path), HF_HUB_OFFLINE="1")
        proc = subprocess.run(
            [sys.executable, "-m", "gptoss", "serve", "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"gptoss: error: --port {port}: 127.0.0.1:{port} is already in use (another server?); "
        "stop it or choose another --port"
    ]
    assert not any(tmp_path.iterdir())  # no demo written, no model loaded, no "serving"


HARMONY_RENDER = """
import io, json, sys
from gptoss.cli.main import build_parser, main
sys.stdin = io.StringIO(json.dumps({"messages": [{"role": "user", "content": "hi"}]}))
sys.stdin.isatty = lambda: False
code = main(["harmony", "render", "--for-completion", "assistant"])
parser = build_parser()
for action in parser._subparsers._group_actions:
    for sub in action.choices.values():
        sub.format_help()
print(json.dumps({"code": code, "heavy": sorted(m for m in ("torch", "numpy", "transformers") if m in sys.modules)}))
"""


def test_harmony_render_and_help_import_no_torch():
    proc = subprocess.run([sys.executable, "-c", HARMONY_RENDER], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    tokens, result = proc.stdout.strip().splitlines()
    assert json.loads(tokens)[:3] == [200006, 1428, 200008]
    assert json.loads(result) == {"code": 0, "heavy": []}


def _options(parser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _options(child, path + (name,))
        elif action.option_strings and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield path, parser, action


def _parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def test_help_is_plain_text_with_help_and_default_for_every_option():
    from gptoss.cli.main import build_parser

    parser = build_parser()
    for p in _parsers(parser):
        text = p.format_help()
        assert "``" not in text and ":func:" not in text and ":class:" not in text, p.prog
    missing, no_default = [], []
    for path, p, action in _options(parser):
        if not action.help:
            missing.append((path, action.option_strings[0]))
            continue
        shown = p._get_formatter()._get_help_string(action)
        default = action.default
        if default not in (None, False, "", [], argparse.SUPPRESS) and "default" not in shown.lower():
            no_default.append((path, action.option_strings[0]))
    assert not missing, f"options without help: {missing}"
    assert not no_default, f"options whose help shows no default: {no_default}"
    serve = " ".join(next(p for p in _parsers(parser) if p.prog == "gptoss serve").format_help().split())
    assert "TCP port to listen on (checked before the model loads) (default: 8000)" in serve
