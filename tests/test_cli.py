"""The command line as a user runs it: make a checkpoint, generate from it, benchmark."""

import json
import subprocess
import sys

import pytest


def gptoss(*args, check=True, env=None):
    proc = subprocess.run([sys.executable, "-m", "gptoss", *args], capture_output=True, text=True, timeout=300, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tiny"
    proc = gptoss(
        "make-checkpoint", "--preset", "tiny", "--layers", "3", "--out", str(out), "--layout", "both", "--seed", "5"
    )
    assert "wrote synthetic tiny checkpoint (3 layers, 8 experts" in proc.stderr
    return out


def test_make_checkpoint_writes_both_layouts_and_tokenizer(ckpt):
    assert (ckpt / "config.json").is_file() and (ckpt / "model.safetensors").is_file()
    assert (ckpt / "original" / "config.json").is_file() and (ckpt / "original" / "model.safetensors").is_file()
    assert (ckpt / "o200k_base.tiktoken").is_file() and (ckpt / "gptoss_synthetic.json").is_file()
    assert json.loads((ckpt / "config.json").read_text())["num_hidden_layers"] == 3


def test_generate_json_from_text_and_ids(ckpt):
    a = json.loads(
        gptoss(
            "generate",
            "--model",
            str(ckpt),
            "--prompt",
            "Hello",
            "--max-tokens",
            "6",
            "--temperature",
            "0",
            "--json",
            "--logprobs",
            "2",
        ).stdout
    )
    assert a["prompt_token_ids"] == [13225] and len(a["token_ids"]) == 6 and a["finish_reason"] == "length"
    assert len(a["logprobs"]) == 6 and all(len(x["top_logprobs"]) == 2 for x in a["logprobs"])
    assert all(x["logprob"] <= 0 for x in a["logprobs"])
    # the same prompt as ids, from the original layout: same tokens
    b = json.loads(
        gptoss(
            "generate",
            "--model",
            str(ckpt / "original"),
            "--prompt-ids",
            "13225",
            "--max-tokens",
            "6",
            "--temperature",
            "0",
            "--json",
        ).stdout
    )
    assert b["token_ids"] == a["token_ids"]
    text = gptoss("generate", "--model", str(ckpt), "--prompt", "Hello", "--max-tokens", "6", "--temperature", "0")
    assert text.stdout.rstrip("\n") == a["text"]
    assert "SYNTHETIC DEMO CHECKPOINT" in text.stderr


def test_generate_rejects_bad_flags(ckpt, capsys):
    from gptoss.cli.main import main  # in-process: the exit status is main's return value (no torch start-up each)

    def run(*args):
        code = main(list(args))
        return code, capsys.readouterr().err

    code, err = run("generate", "--model", str(ckpt), "--prompt-ids", "1,x")
    assert code == 1 and "--prompt-ids: expected comma-separated integers" in err
    code, err = run("generate", "--model", str(ckpt), "--prompt", "hi", "--top-p", "1.5")
    assert code == 1 and "sampling parameter 'top_p': expected a number in (0, 1], found 1.5" in err
    code, err = run("make-checkpoint", "--preset", "tiny", "--hidden", "70", "--out", str(ckpt.parent / "x"))
    assert code == 1 and "'hidden_size': expected a multiple of 32 (the MXFP4 block), found 70" in err


def test_bench_prints_json():
    out = json.loads(
        gptoss(
            "bench",
            "--preset",
            "tiny",
            "--prompt-len",
            "32",
            "--decode-tokens",
            "4",
            "--batch-sizes",
            "1,2",
            "--repeats",
            "1",
        ).stdout
    )
    assert out["prefill"]["tokens"] == 32 and out["prefill"]["tok_s"] > 0
    assert [d["batch"] for d in out["decode"]] == [1, 2] and all(d["tok_s"] > 0 for d in out["decode"])
    assert out["weights_bytes"]["mxfp4_experts"] > 0 and out["resident_bytes_model"] > 0


def test_bench_agent_reuses_each_steps_history(ckpt):
    """The agent-loop benchmark: each step after the first finds the previous history in the prefix cache;
    the engine without reuse finds nothing (llama.cpp is reported skipped when it cannot run)."""
    out = json.loads(
        gptoss(
            "bench",
            "--agent",
            "--model",
            str(ckpt),
            "--agent-history",
            "40",
            "--agent-step",
            "20",
            "--agent-steps",
            "3",
            "--gguf",
            "/nonexistent.gguf",
        ).stdout
    )
    steps = out["steps"]
    assert [s["history_tokens"] for s in steps] == [40, 60, 80]
    assert [s["gptoss_cached_tokens"] for s in steps] == [0, 32, 48]  # whole blocks of 16 of the last history
    assert all(s["gptoss_cold_cached_tokens"] == 0 and s["gptoss_ttft_s"] > 0 for s in steps)
    assert "llama_cpp" in out["skipped"]


def test_serve_rejects_an_unknown_tool_before_loading_the_model(ckpt):
    proc = gptoss("serve", "--model", str(ckpt), "--tools", "python,teleport", check=False)
    assert proc.returncode == 1
    assert "--tools: unknown tool 'teleport'" in proc.stderr and "SYNTHETIC" not in proc.stderr


def test_serve_takes_a_memory_budget_for_all_python_sandboxes(ckpt):
    import argparse

    from gptoss.cli.serve import parse_size, python_config

    assert [parse_size(t, "--f") for t in ("16g", "512m", "1048576", "1.5G")] == [
        16 * 2**30,
        512 * 2**20,
        2**20,
        3 * 2**29,
    ]
    config = python_config(argparse.Namespace(python_sandboxes_memory="8g"))
    assert config.limits.sandboxes_memory_bytes == 8 * 2**30 and config.limits.total_memory_bytes == 4 * 2**30
    proc = gptoss("serve", "--model", str(ckpt), "--tools", "python", "--python-sandboxes-memory", "lots", check=False)
    assert proc.returncode == 1 and "--python-sandboxes-memory: expected a size such as 16g" in proc.stderr
