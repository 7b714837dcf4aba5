"""Every bad input gives one clear line naming the tensor or field, expected against found."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from gptoss.errors import CheckpointError, ConfigError
from gptoss.model import Transformer
from tests.helpers import checkpoint


def rewrite(path, change):
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


@pytest.fixture
def hf_ckpt(tmp_path):
    return checkpoint(tmp_path / "ck", layout="both", seed=1)


def test_missing_tensor(hf_ckpt):
    rewrite(hf_ckpt / "model.safetensors", lambda t: t.pop("model.layers.1.self_attn.sinks"))
    with pytest.raises(CheckpointError, match=r"missing tensor model\.layers\.1\.self_attn\.sinks \(hf layout\)"):
        Transformer.from_checkpoint(hf_ckpt)


def test_extra_tensor(hf_ckpt):
    rewrite(hf_ckpt / "original" / "model.safetensors", lambda t: t.update({"block.7.attn.sinks": torch.zeros(4)}))
    with pytest.raises(
        CheckpointError, match=r"unexpected tensor block\.7\.attn\.sinks \(original layout, config has 2 layers"
    ):
        Transformer.from_checkpoint(hf_ckpt / "original")


def test_misshaped_tensor(hf_ckpt):
    rewrite(
        hf_ckpt / "model.safetensors",
        lambda t: t.update({"model.layers.0.mlp.experts.down_proj_scales": torch.zeros(8, 64, 3, dtype=torch.uint8)}),
    )
    with pytest.raises(
        CheckpointError,
        match=r"tensor model\.layers\.0\.mlp\.experts\.down_proj_scales: "
        r"expected shape \[8, 64, 2\], found \[8, 64, 3\]",
    ):
        Transformer.from_checkpoint(hf_ckpt)


def test_wrong_dtype_for_mxfp4(hf_ckpt):
    def change(t):
        t["block.0.mlp.mlp1_weight.blocks"] = t["block.0.mlp.mlp1_weight.blocks"].to(torch.int16).to(torch.bfloat16)

    rewrite(hf_ckpt / "original" / "model.safetensors", change)
    with pytest.raises(
        CheckpointError, match=r"tensor block\.0\.mlp\.mlp1_weight\.blocks: expected dtype U8 \(MXFP4\), found BF16"
    ):
        Transformer.from_checkpoint(hf_ckpt / "original")


def test_truncated_file(hf_ckpt):
    path = hf_ckpt / "model.safetensors"
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 1000)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unreadable safetensors file \(.*\)"):
        Transformer.from_checkpoint(hf_ckpt, layout="hf")


def test_bad_config(hf_ckpt):
    cfg = hf_ckpt / "config.json"
    data = json.loads(cfg.read_text())
    cfg.write_text(json.dumps(data | {"num_key_value_heads": 3}))
    with pytest.raises(
        ConfigError, match=r"config\.json: config field 'num_key_value_heads': 3 does not divide num_attention_heads 4"
    ):
        Transformer.from_checkpoint(hf_ckpt, layout="hf")


def test_config_disagreeing_with_tensors(hf_ckpt):
    cfg = hf_ckpt / "original" / "config.json"
    cfg.write_text(json.dumps(json.loads(cfg.read_text()) | {"num_experts": 16}))
    with pytest.raises(
        CheckpointError, match=r"block\.0\.mlp\.gate\.weight: expected shape \[16, 64\], found \[8, 64\]"
    ):
        Transformer.from_checkpoint(hf_ckpt / "original")


def test_sharded_hf_checkpoint_with_index(tmp_path):
    from gptoss.model.config import ModelConfig
    from gptoss.model.synthetic import write_checkpoint

    folder = write_checkpoint(tmp_path, ModelConfig.preset("tiny"), layout="hf", seed=2, max_shard_bytes=30_000_000)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2
    tokens = torch.arange(1, 20)
    whole = write_checkpoint(tmp_path / "whole", ModelConfig.preset("tiny"), layout="hf", seed=2)
    assert torch.equal(Transformer.from_checkpoint(folder)(tokens), Transformer.from_checkpoint(whole)(tokens))
    os.remove(folder / sorted(set(index["weight_map"].values()))[-1])
    with pytest.raises(CheckpointError, match="which is missing"):
        Transformer.from_checkpoint(folder)


def test_missing_folder_and_offline_hub_id(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="no such folder"):
        Transformer.from_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        Transformer.from_checkpoint(tmp_path / "empty")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        CheckpointError,
        match=r"cannot fetch openai/gpt-oss-20b: offline mode .*hf download openai/gpt-oss-20b --local-dir DIR",
    ):
        Transformer.from_checkpoint("openai/gpt-oss-20b")


def test_cli_prints_one_line_without_traceback(hf_ckpt):
    rewrite(hf_ckpt / "model.safetensors", lambda t: t.pop("lm_head.weight"))
    proc = subprocess.run(
        [sys.executable, "-m", "gptoss", "generate", "--model", str(hf_ckpt), "--prompt", "hi"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"gptoss: error: {hf_ckpt}: missing tensor lm_head.weight (hf layout)"]
    assert "Traceback" not in proc.stderr


def test_config_with_ten_million_layers_is_refused_before_anything_is_built(hf_ckpt):
    """No layer_types: the sizes alone would have built a list of 10**7 layers (then 150 million tensor
    names, gigabytes) before any check. Every size is bounded first."""
    from gptoss.model.config import ModelConfig

    cfg = hf_ckpt / "original" / "config.json"
    cfg.write_text(json.dumps(json.loads(cfg.read_text()) | {"num_hidden_layers": 10**7}))
    message = r"config\.json: config field 'num_hidden_layers': 10000000 is over the ceiling of 1024"
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_file(cfg)
    with pytest.raises(ConfigError, match=message):
        Transformer.from_checkpoint(hf_ckpt / "original")
    for name, value in (("vocab_size", 2**40), ("hidden_size", 2**30), ("max_position_embeddings", 2**40)):
        with pytest.raises(ConfigError, match=f"'{name}': {value} is over the ceiling"):
            ModelConfig.preset("tiny").replace(**{name: value})


@pytest.fixture(scope="module")
def sharded_template(tmp_path_factory):
    from gptoss.model.config import ModelConfig
    from gptoss.model.synthetic import write_checkpoint

    return write_checkpoint(
        tmp_path_factory.mktemp("sharded"), ModelConfig.preset("tiny"), layout="hf", seed=2, max_shard_bytes=30_000_000
    )


@pytest.fixture
def sharded(sharded_template, tmp_path):
    import shutil

    return shutil.copytree(sharded_template, tmp_path / "ck")


@pytest.mark.parametrize(
    "change,message",
    [
        (
            lambda index: index | {"weight_map": list(index["weight_map"])},
            r"'weight_map': expected an object \(tensor name -> file name\), found list",
        ),
        (lambda index: {"metadata": {}}, r"'weight_map': expected an object .*found nothing"),
        (
            lambda index: index | {"weight_map": index["weight_map"] | {"lm_head.weight": 7}},
            r"'weight_map\.lm_head\.weight': expected the name of a file in .*, found 7",
        ),
        (
            lambda index: index | {"weight_map": index["weight_map"] | {"lm_head.weight": "../../etc/passwd"}},
            r"'weight_map\.lm_head\.weight': expected the name of a file in .*, found '\.\./\.\./etc/passwd'",
        ),
    ],
    ids=["weight_map a list", "no weight_map", "file not a string", "file outside the folder"],
)
def test_malformed_index_is_one_line(sharded, change, message):
    path = sharded / "model.safetensors.index.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    with pytest.raises(CheckpointError, match=message):
        Transformer.from_checkpoint(sharded)


def test_index_mapping_a_tensor_to_a_file_that_lacks_it(sharded):
    path = sharded / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    files = sorted(set(index["weight_map"].values()))
    name = next(n for n, f in index["weight_map"].items() if f == files[0])
    index["weight_map"][name] = files[1]
    path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"tensor {name} is mapped to {files[1]}, which does not hold it"):
        Transformer.from_checkpoint(sharded)
