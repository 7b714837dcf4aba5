"""The runner against the oracle fake server: failures recorded and retried on resume, transient errors
retried in place, misconfigurations stopped with one clear line, the python tool, report-only."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types

import pytest

from gptoss.cli.main import main
from gptoss.errors import GptossError
from gptoss.eval.runner import AttemptStore, Endpoint, EvalConfig, normalize_base_url, run_eval


def config(server, out, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("retry_backoff", 0.001)
    return EvalConfig(Endpoint(server.base_url, kw.pop("model", server.model)), out, **kw)


def test_failed_attempts_are_recorded_then_retried_on_resume(fake_server, tmp_path):
    from gptoss.eval.datasets import load_eval

    broken = load_eval("mmlu", ["samples"]).items[2].question  # always 500
    flaky = load_eval("mmlu", ["samples"]).items[4].question  # one 429, then fine
    seen_flaky = []

    def fail(req):
        if req.kind != "choice":
            return None
        if broken in req.content:
            return 500
        if flaky in req.content and not seen_flaky:
            seen_flaky.append(1)
            return 429
        return None

    fake_server.fail = fail
    cfg = config(fake_server, tmp_path, evals=["mmlu"], efforts=["low"], retries=2)
    summary = run_eval(cfg)
    records = AttemptStore(tmp_path / "attempts.jsonl").load()
    errors = {k: r["error"] for k, r in records.items() if r["error"]}
    assert len(records) == 8 and len(errors) == 1  # recorded, not dropped
    ((key, message),) = errors.items()
    assert "InternalServerError" in message and records[key]["score"] is None
    assert len([r for r in fake_server.log if broken in r.content]) == 3  # 1 + 2 retries
    assert summary["attempts"] == {"planned": 8, "completed": 7, "errors": 1, "missing": 0}
    assert summary["results"][0]["accuracy"] == 1.0  # over the 7 completed items
    assert "rerun the same command" in (tmp_path / "report.md").read_text()

    fake_server.fail = None
    fake_server.log.clear()
    summary = run_eval(cfg)
    assert [r.content for r in fake_server.log] == [records[key]["prompt"][-1]["content"]]  # only the failed one
    assert summary["attempts"]["errors"] == 0 and summary["attempts"]["completed"] == 8


def test_samples_average_pass_at_1(fake_server, tmp_path):
    from gptoss.eval.datasets import load_eval

    problem = load_eval("aime", ["samples"]).items[0].problem
    seeds = []
    oracle = fake_server.answer

    def answer(req):  # item 1 is answered wrongly once out of its three samples
        if req.kind == "aime" and problem in req.content:
            seeds.append(req.body["seed"])
            if len(seeds) == 1:
                return {"content": "The answer is \\boxed{1}.", "reasoning_content": ""}
        return oracle(req)

    fake_server.answer = answer
    summary = run_eval(config(fake_server, tmp_path, evals=["aime"], efforts=["medium"], samples=3, concurrency=1))
    row = summary["results"][0]
    assert row["attempts"] == 18 and row["samples"] == 3
    assert row["accuracy"] == pytest.approx((5 + 2 / 3) / 6)  # the item's mean over samples, then over items
    assert len(set(seeds)) == 3  # each sample has its own seed


def test_wrong_model_unreachable_server_and_changed_settings(fake_server, tmp_path):
    with pytest.raises(GptossError, match=r"does not serve model 'nope'; it serves fake-model"):
        run_eval(config(fake_server, tmp_path / "a", model="nope", evals=["aime"], efforts=["low"]))
    with pytest.raises(GptossError, match=r"cannot reach http://127.0.0.1:9/v1 .*is the server running"):
        run_eval(EvalConfig(Endpoint("http://127.0.0.1:9"), tmp_path / "b", evals=["aime"], progress=False))
    # the model is optional when the server lists exactly one
    cfg = config(fake_server, tmp_path / "c", model=None, evals=["aime"], efforts=["low"], limit=1)
    assert run_eval(cfg)["model"] == "fake-model"
    with pytest.raises(GptossError, match=r"run.json: this folder holds a run with max_tokens=None, not 64"):
        run_eval(config(fake_server, tmp_path / "c", evals=["aime"], efforts=["low"], max_tokens=64))
    with pytest.raises(GptossError, match="--reasoning-effort: unknown effort 'extreme'"):
        config(fake_server, tmp_path, efforts=["extreme"])
    with pytest.raises(GptossError, match="--eval: unknown eval 'mmmlu'"):
        config(fake_server, tmp_path, evals=["mmmlu"])
    assert normalize_base_url("http://h:8000") == "http://h:8000/v1"
    assert normalize_base_url("http://h:8000/v1/") == "http://h:8000/v1"


def test_cli_prints_one_line_errors(tmp_path, capsys):
    rc = main(["eval", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--eval", "aime", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("gptoss: error: cannot reach") and "\n" not in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "p", "answer": "x"}\n')
    rc = main(["eval", "--eval", "aime", "--data", f"aime={bad}", "--out", str(tmp_path)])
    assert rc == 1 and f"{bad}:1: field 'answer' must be an integer" in capsys.readouterr().err


def test_report_only_asks_nothing(fake_server, tmp_path, capsys):
    cfg = config(fake_server, tmp_path, evals=["gpqa"], efforts=["low", "high"], limit=3)
    run_eval(cfg)
    n = len(fake_server.log)
    (tmp_path / "summary.json").unlink()
    assert (
        main(
            [
                "eval",
                "--base-url",
                "http://127.0.0.1:9",
                "--model",
                "fake-model",
                "--eval",
                "gpqa",
                "--reasoning-effort",
                "low,high",
                "--limit",
                "3",
                "--out",
                str(tmp_path),
                "--report-only",
            ]
        )
        == 0
    )
    assert len(fake_server.log) == n
    assert json.loads((tmp_path / "summary.json").read_text())["attempts"]["completed"] == 6


def fake_python_module():
    """A stand-in for gptoss.tools.python with its interface: PythonTool().execute(code) -> .output."""
    module = types.ModuleType("gptoss.tools.python")
    module.__spec__ = importlib.machinery.ModuleSpec("gptoss.tools.python", None)
    module.instances = []

    class PythonTool:
        def __init__(self):
            self.closed = False
            module.instances.append(self)

        async def execute(self, code):
            import contextlib
            import io

            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                exec(code, {})
            return types.SimpleNamespace(output=buf.getvalue(), status="ok")

        async def aclose(self):
            self.closed = True

    module.PythonTool = PythonTool
    return module


def test_python_tool(fake_server, tmp_path, monkeypatch):
    fake_server.python_tool_calls = True
    module = fake_python_module()
    monkeypatch.setitem(sys.modules, "gptoss.tools.python", module)
    summary = run_eval(config(fake_server, tmp_path / "ok", evals=["aime"], efforts=["low"], tools=["python"]))
    assert summary["results"][0]["accuracy"] == 1.0  # the answer came back through the tool
    records = AttemptStore(tmp_path / "ok" / "attempts.jsonl").load().values()
    assert all(r["tool_calls"] == 1 for r in records)
    assert len(module.instances) == 6 and all(t.closed for t in module.instances)  # one kernel per attempt
    followups = fake_server.requests_of("tool-followup")
    assert len(followups) == 6 and followups[0].body["tools"][0]["function"]["name"] == "python"

    monkeypatch.setitem(sys.modules, "gptoss.tools.python", None)  # as if gptoss.tools were not installed
    with pytest.raises(GptossError, match="the python tool is unavailable"):
        run_eval(config(fake_server, tmp_path / "missing", evals=["aime"], efforts=["low"], tools=["python"]))


def test_extending_a_run_asks_only_what_is_new(fake_server, tmp_path):
    run_eval(config(fake_server, tmp_path, evals=["aime"], efforts=["low"], limit=2))
    assert len(fake_server.log) == 2
    fake_server.log.clear()
    summary = run_eval(
        config(fake_server, tmp_path, evals=["aime", "gpqa"], efforts=["low", "high"], limit=2, samples=2)
    )
    assert summary["attempts"]["completed"] == 16
    assert len(fake_server.requests_of("aime", "choice")) == 16 - 2  # the first run's attempts are kept
    other = tmp_path / "other.jsonl"
    other.write_text('{"problem": "p", "answer": 1}\n')
    with pytest.raises(GptossError, match=r"holds a run with data=\{'aime': \['samples'\]\}"):
        run_eval(config(fake_server, tmp_path, evals=["aime"], efforts=["low"], data=f"aime={other}"))
