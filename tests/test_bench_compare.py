"""`gptoss bench --compare`: the side-by-side JSON, and clear messages when llama.cpp or its converter is missing.
(Only the shape is tested here; speed is claimed by the benchmark's JSON, never by a test.)"""

import argparse
import json

import pytest

from gptoss.bench import compare
from gptoss.errors import GptossError
from gptoss.model import ModelConfig
from gptoss.model.synthetic import write_checkpoint

from .test_cli import gptoss


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("cmp") / "tiny", ModelConfig.preset("tiny"), tokenizer=False)


def _args(ckpt, **kw):
    base = dict(
        model=str(ckpt),
        device="cpu",
        threads=2,
        seed=0,
        prompt_len=20,
        decode_tokens=2,
        batch_decode_tokens=1,
        rounds=1,
        gguf=None,
        llama_cpp_converter=None,
        transformers_prompt_len=8,
        transformers_decode_tokens=1,
        transformers_rounds=1,
        engine_timeout=1800,
    )
    return argparse.Namespace(**(base | kw))


def test_compare_without_llama_cpp_reports_why_and_still_times_gptoss(ckpt, monkeypatch):
    monkeypatch.setattr(compare, "llama_cpp_version", lambda: None)
    monkeypatch.setattr(compare, "mem_available_bytes", lambda: 2**20)  # no room for transformers' copy
    out = json.loads(json.dumps(compare.run_compare(_args(ckpt), ["gptoss", "llama.cpp", "transformers"])))
    assert out["engines"]["llama.cpp"] == {"skipped": compare.NO_LLAMA_CPP}
    [skip] = out["engines"]["transformers"]["rounds"]
    assert skip["error"].startswith("skipped: needs ~")
    assert skip["error"].endswith("GiB for its dequantized copy, 0.0 GiB available")
    assert "prefill_tok_s" not in out["engines"]["transformers"]
    assert "pip install llama-cpp-python" in compare.NO_LLAMA_CPP
    ours = out["engines"]["gptoss"]
    assert [r["round"] for r in ours["rounds"]] == [1] and "error" not in ours["rounds"][0], ours["rounds"]
    assert ours["prefill_tokens"] == 20 and ours["prefill_tok_s"]["min"] > 0
    assert ours["decode_b1_tok_s"]["n"] == 1 and ours["decode_b8_tok_s"]["median"] > 0
    assert ours["peak_rss_gib"]["min"] > 0 and ours["rounds"][0]["bytes_per_step"]["8"]["total"] > 0
    assert out["floor"]["batch1_floor_tok_s"] > 0 and out["floor"]["measured_copy_gbs"]["n"] == 1
    assert out["floor"]["batch1_floor_at_read_1gib_tok_s"] > 0 and out["floor"]["measured_read_1gib_gbs"]["n"] == 1
    assert out["ratios"]["gptoss_b8_to_b1"]["n"] == 1 and "gptoss_to_llama_cpp_decode_b1" not in out["ratios"]
    assert set(out["targets_met"]) == {"decode_b1_at_least_half_the_floor", "b8_at_least_3x_b1"}
    assert out["threads"] == 2 and out["order"] == ["gptoss", "llama.cpp", "transformers"]


def test_gguf_and_converter_are_found_or_named(ckpt, tmp_path, monkeypatch):
    monkeypatch.delenv(compare.CONVERTER_ENV, raising=False)
    assert compare.find_gguf(ckpt, None, None) == (None, compare.NO_CONVERTER)
    assert "--llama-cpp-converter" in compare.NO_CONVERTER and compare.CONVERTER_ENV in compare.NO_CONVERTER
    path, why = compare.find_gguf(ckpt, str(tmp_path / "none.gguf"), None)
    assert path is None and why == f"--gguf {tmp_path / 'none.gguf'}: file not found"
    monkeypatch.setenv(compare.CONVERTER_ENV, str(tmp_path / "llama.cpp"))
    path, why = compare.find_gguf(ckpt, None, None)
    assert path is None and "not found (expected convert_hf_to_gguf.py)" in why
    broken = tmp_path / "convert_hf_to_gguf.py"  # a converter that fails: its last line of stderr is reported
    broken.write_text("import sys\nsys.exit('cannot convert this')\n")
    path, why = compare.find_gguf(ckpt, None, str(broken))
    assert path is None and why.endswith("cannot convert this") and not (ckpt.parent / "tiny.gguf").exists()
    made = ckpt.parent / "tiny.gguf"  # an existing GGUF beside the checkpoint, newer than it, is reused
    made.write_bytes(b"GGUF")
    assert compare.find_gguf(ckpt, None, None) == (made, None)
    made.unlink()


def test_compare_flags_fail_with_one_line(ckpt):
    with pytest.raises(GptossError, match="--compare: unknown engine ollama"):
        compare.parse_engines("llama.cpp,ollama")
    assert compare.parse_engines("transformers,llama.cpp") == ["gptoss", "llama.cpp", "transformers"]
    proc = gptoss("bench", "--compare", "llama.cpp", "--device", "cpu", check=False)
    assert proc.returncode == 1 and "--compare needs --model CHECKPOINT" in proc.stderr
    proc = gptoss("bench", "--compare", "llama.cpp", "--model", str(ckpt), "--rounds", "0", check=False)
    assert proc.returncode == 1 and "--rounds: expected a positive number, found 0" in proc.stderr
    proc = gptoss("bench", "--agent", "--compare", "llama.cpp", "--model", str(ckpt), check=False)
    assert proc.returncode == 1 and "--agent times llama.cpp beside gptoss itself (from --gguf)" in proc.stderr
