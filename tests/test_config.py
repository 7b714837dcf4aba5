import json

import pytest

from gptoss.errors import ConfigError
from gptoss.model.config import PRESETS, ModelConfig


def test_presets_have_the_published_shapes():
    small, big = ModelConfig.preset("gpt-oss-20b"), ModelConfig.preset("gpt-oss-120b")
    assert (small.num_hidden_layers, small.num_experts) == (24, 32)
    assert (big.num_hidden_layers, big.num_experts) == (36, 128)
    for c in (small, big):
        assert (c.hidden_size, c.experts_per_token, c.vocab_size, c.head_dim) == (2880, 4, 201088, 64)
        assert (c.num_attention_heads, c.num_key_value_heads, c.sliding_window) == (64, 8, 128)
        assert c.window(0) == 128 and c.window(1) == 0
    # 4.25 bits per expert parameter, bf16 elsewhere: 20b ~ 12.8 GiB, 120b ~ 61 GiB (DESIGN.md).
    assert 12.5 < small.weight_bytes() / 2**30 < 13.2
    assert 60 < big.weight_bytes() / 2**30 < 62


@pytest.mark.parametrize("name", list(PRESETS))
def test_both_config_files_round_trip(name):
    config = PRESETS[name]
    assert ModelConfig.from_hf(json.loads(json.dumps(config.to_hf()))) == config
    assert ModelConfig.from_original(json.loads(json.dumps(config.to_original()))) == config


def test_official_hf_config_json_is_read(tmp_path):
    # The fields of openai/gpt-oss-20b's config.json as published.
    data = PRESETS["gpt-oss-20b"].to_hf() | {"transformers_version": "4.55.0.dev0", "router_aux_loss_coef": 0.9}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    assert ModelConfig.from_file(path) == PRESETS["gpt-oss-20b"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_hidden_layers": -1}, "'num_hidden_layers': expected a positive integer"),
        ({"num_key_value_heads": 5}, "'num_key_value_heads': 5 does not divide num_attention_heads 64"),
        ({"hidden_size": 2881}, "'hidden_size': expected a multiple of 32"),
        ({"experts_per_token": 64}, "'experts_per_token': 64 exceeds num_experts 32"),
        ({"head_dim": "64"}, "'head_dim': expected a number"),
        ({"bogus_field": 1}, "unknown field 'bogus_field'"),
        ({"num_experts": 32.5}, "'num_experts': expected an integer"),
    ],
)
def test_bad_original_config_names_the_field(change, message):
    data = PRESETS["gpt-oss-20b"].to_original() | change
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        ModelConfig.from_original(data, "original/config.json")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "llama"}, "'model_type': expected 'gpt_oss', found 'llama'"),
        ({"tie_word_embeddings": True}, "'tie_word_embeddings': gpt-oss requires False"),
        ({"num_experts_per_tok": 2}, "'experts_per_token' \\(4\\) and 'num_experts_per_tok' \\(2\\) disagree"),
        ({"layer_types": ["full_attention"]}, "'layer_types': expected 24 entries"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "'rope_scaling.rope_type': expected 'yarn'"),
        ({"whatever": 3}, "unknown field 'whatever'"),
    ],
)
def test_bad_hf_config_names_the_field(change, message):
    data = PRESETS["gpt-oss-20b"].to_hf() | change
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_hf(data)


def test_unreadable_config_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="config.json: not valid JSON"):
        ModelConfig.from_file(path)
    with pytest.raises(ConfigError, match="config file not found"):
        ModelConfig.from_file(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="unknown preset 'gpt-oss-7b'"):
        ModelConfig.preset("gpt-oss-7b")
