"""``gptoss eval`` end to end over the packaged sample sets, against an OpenAI-compatible server
(the oracle fake, and the real ``gptoss serve`` on random weights when it exists): every item attempted,
summary, report and plots written, and a run killed midway resumes without redoing finished items."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from gptoss.cli.main import main
from gptoss.eval.runner import AttemptStore
from tests.eval.conftest import REPO

SAMPLE_SIZES = {"aime": 6, "gpqa": 8, "mmlu": 8, "healthbench": 4}
PNG = b"\x89PNG\r\n\x1a\n"


def eval_args(backend, out, *extra, limit=1):
    args = ["eval", "--base-url", backend.base_url, "--out", str(out), "--no-progress", "--retries", "2"]
    if backend.model:
        args += ["--model", backend.model]
    if backend.name == "serve":  # random weights on a CPU: short answers; their grader never gives a verdict
        args += ["--max-tokens", "8", "--limit", str(limit), "--concurrency", "4", "--grader-retries", "0"]
    return args + list(extra)


def planned_keys(evals, efforts, limit=None):
    from gptoss.eval.datasets import load_eval

    keys = set()
    for name in evals:
        items = load_eval(name, ["samples"]).items[:limit]
        keys |= {f"{name}|{e}|{i.id}|0" for e in efforts for i in items}
    return keys


def lines_per_key(path):
    counts = {}
    for line in path.read_text().splitlines():
        try:
            key = json.loads(line)["key"]
        except (json.JSONDecodeError, KeyError):
            continue
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_every_item_attempted_summary_and_plots(backend, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(eval_args(backend, out))
    limit = 1 if backend.name == "serve" else None
    expected = planned_keys(SAMPLE_SIZES, ["low", "medium", "high"], limit)
    records = AttemptStore(out / "attempts.jsonl").load()
    assert set(records) == expected  # every item, every effort
    assert all(r["error"] is None for r in records.values()), [r["error"] for r in records.values() if r["error"]]
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["attempts"] == {"planned": len(expected), "completed": len(expected), "errors": 0, "missing": 0}
    assert [(r["eval"], r["effort"]) for r in summary["results"]] == [
        (e, eff) for eff in ("low", "medium", "high") for e in SAMPLE_SIZES
    ]
    for r in summary["results"]:
        assert r["items"] == (limit or SAMPLE_SIZES[r["eval"]])
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["mean_completion_tokens"] > 0
    for name in ("accuracy_vs_effort.png", "accuracy_vs_tokens.png"):
        assert (out / name).read_bytes()[:8] == PNG
    report = (out / "report.md").read_text()
    assert "accuracy_vs_effort.png" in report and "HealthBench by theme" in report
    assert "healthbench" in capsys.readouterr().out

    if backend.fake:  # the oracle answers everything right; reasoning grows with effort
        assert all(r["accuracy"] == 1.0 for r in summary["results"])
        hb = [r for r in summary["results"] if r["eval"] == "healthbench"]
        assert all(
            r["themes"] == {"context_seeking": 1.0, "emergency_referrals": 1.0, "global_health": 1.0} for r in hb
        )
        tokens = {r["effort"]: r["mean_completion_tokens"] for r in summary["results"] if r["eval"] == "aime"}
        assert tokens["low"] < tokens["medium"] < tokens["high"]
        assert backend.fake.requests_of("grader")  # HealthBench went through the grader
        # a finished run, rerun: nothing is asked again
        before = len(backend.fake.log)
        assert main(eval_args(backend, out)) == 0
        assert len(backend.fake.log) == before


def test_killed_run_resumes_without_redoing_finished_items(backend, tmp_path):
    out = tmp_path / "run"
    evals, efforts = ["aime", "mmlu", "healthbench"], ["low", "high"]
    args = eval_args(
        backend, out, "--eval", ",".join(evals), "--reasoning-effort", ",".join(efforts), "--concurrency", "2", limit=2
    )
    limit = 2 if backend.name == "serve" else None
    expected = planned_keys(evals, efforts, limit)
    attempts = out / "attempts.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptoss", *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 120
        while not (attempts.is_file() and attempts.read_text().count("\n") >= 3):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "no attempts recorded within 120 s"
            time.sleep(0.01)
    finally:
        proc.kill()  # SIGKILL: no cleanup, whatever was in flight is lost
        proc.wait()
        proc.stderr.close()
    time.sleep(0.2)  # let requests already sent reach the fake's log before it is cleared
    first = lines_per_key(attempts)
    finished = {k for k, r in AttemptStore(attempts).load().items() if r["error"] is None}
    assert 3 <= len(finished) < len(expected), "the run was not killed midway"
    finished_prompts = {
        (r["prompt"][-1]["content"], r["effort"]) for k, r in AttemptStore(attempts).load().items() if k in finished
    }
    if backend.fake:
        backend.fake.log.clear()

    assert main(args) == 0
    records = AttemptStore(attempts).load()
    assert set(records) == expected and all(r["error"] is None for r in records.values())
    after = lines_per_key(attempts)
    assert all(after[k] == first[k] == 1 for k in finished)  # finished attempts were not redone
    assert all(after[k] == 1 for k in expected - finished)
    if backend.fake:
        asked = [(r.content, r.effort) for r in backend.fake.requests_of("aime", "choice", "healthbench")]
        assert len(asked) == len(expected) - len(finished)
        assert not finished_prompts & set(asked)
