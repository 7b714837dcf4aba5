"""Synthetic checkpoints carry the tokenizer.json / tokenizer_config.json of the official repositories:
transformers' AutoTokenizer loads them and encodes exactly as gptoss does, special tokens included."""

import json

import pytest

from gptoss import hf_tokenizer
from gptoss.hf_tokenizer import hf_special_tokens
from gptoss.model import ModelConfig
from gptoss.model.synthetic import write_checkpoint
from gptoss.tokenizer import Tokenizer

from .test_tokenizer import SAMPLES


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt"), ModelConfig.preset("tiny"))


@pytest.fixture(scope="module")
def hf(ckpt):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ckpt)


def test_checkpoint_carries_the_hf_tokenizer_files(ckpt):
    spec = json.loads((ckpt / "tokenizer.json").read_text())
    assert spec["model"]["type"] == "BPE" and len(spec["model"]["vocab"]) == 199998
    added = {t["content"]: t["id"] for t in spec["added_tokens"]}
    assert added == hf_special_tokens() and all(t["special"] for t in spec["added_tokens"])
    config = json.loads((ckpt / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == (
        "<|startoftext|>",
        "<|return|>",
        "<|endoftext|>",
    )
    assert {int(i): t["content"] for i, t in config["added_tokens_decoder"].items()} == {
        i: n for n, i in hf_special_tokens().items()
    }


@pytest.mark.parametrize("text", SAMPLES)
def test_auto_tokenizer_encodes_like_gptoss(hf, tokenizer, text):
    # Text with special-token strings in it: transformers splits them out as special tokens, as tiktoken does
    # when they are allowed.
    assert hf.encode(text, add_special_tokens=False) == tokenizer.encoding.encode(text, allowed_special="all")
    plain = text.replace("<|", "< |")
    assert hf.encode(plain, add_special_tokens=False) == tokenizer.encode(plain)
    assert hf.decode(tokenizer.encode(plain)) == plain


def test_auto_tokenizer_special_tokens(hf, tokenizer):
    assert len(hf) == 201088 and len(hf_special_tokens()) == 201088 - 199998
    assert hf_special_tokens()["<|endofprompt|>"] == 200018
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (199998, 200002, 199999)
    for name, i in hf_special_tokens().items():
        assert hf.convert_ids_to_tokens(i) == name
    ids = [200006, 200008, 200007, 200012]
    assert hf.decode(ids) == tokenizer.decode(ids) == "<|start|><|message|><|end|><|call|>"


def test_gptoss_tokenizer_reads_the_written_tokenizer_json(ckpt, tmp_path, tokenizer):
    (tmp_path / "tokenizer.json").write_bytes((ckpt / "tokenizer.json").read_bytes())
    for tok in (Tokenizer.load(model_dir=tmp_path), Tokenizer.load(bpe_file=tmp_path / "tokenizer.json")):
        for text in SAMPLES:
            assert tok.encode(text) == tokenizer.encode(text)
        assert tok.special_id("<|call|>") == 200012


def test_cached_tokenizer_json_is_rebuilt_when_torn(tmp_path, monkeypatch):
    builds = []

    def fake_build(path):
        builds.append(path)
        path.write_text('{"built": %d}' % len(builds))

    monkeypatch.setenv("GPTOSS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hf_tokenizer, "build_tokenizer_json", fake_build)
    out = tmp_path / "ckpt"
    hf_tokenizer.write_hf_tokenizer_files(out)
    hf_tokenizer.write_hf_tokenizer_files(out)
    assert len(builds) == 1  # the second write came from the cache
    cached = next((tmp_path / "cache").rglob("tokenizer.json"))
    cached.write_text('{"built": 1, "torn')
    hf_tokenizer.write_hf_tokenizer_files(out)
    assert len(builds) == 2 and json.loads((out / "tokenizer.json").read_text()) == {"built": 2}
    assert not list((tmp_path / "cache").rglob("*.partial"))
