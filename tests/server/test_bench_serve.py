"""The load generator against a live server: every request completes and the JSON report is complete."""

import json
import subprocess
import sys

from tests.server.conftest import serve


def test_bench_serve_reports_throughput_and_latency_percentiles(tiny_llm):
    with serve(tiny_llm(max_batch=4)) as base:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "gptoss",
                "bench-serve",
                "--base-url",
                base + "/v1",
                "--requests",
                "12",
                "--concurrency",
                "4",
                "--prompt-tokens",
                "32",
                "--output-tokens",
                "8",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["completed"] == 12 and out["failed"] == 0
    assert out["output_tokens_per_second"] > 0 and out["requests_per_second"] > 0
    for key in ("ttft_seconds", "tpot_seconds", "latency_seconds"):
        stats = out[key]
        assert 0 < stats["p50"] <= stats["p90"] <= stats["p99"]
    assert out["ttft_seconds"]["p50"] <= out["latency_seconds"]["p50"]


def test_bench_serve_unreachable_server_is_one_clear_line():
    proc = subprocess.run(
        [sys.executable, "-m", "gptoss", "bench-serve", "--base-url", "http://127.0.0.1:9/v1", "--requests", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("gptoss: error: cannot reach http://127.0.0.1:9/v1")
