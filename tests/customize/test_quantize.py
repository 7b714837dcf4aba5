"""``gptoss quantize``: a dense-expert checkpoint (experts moved off the MXFP4 grid, as a fine-tune leaves
them) packed back to MXFP4 loads in transformers' MXFP4 path and in gptoss with the same logits, in both
layouts, close to the dense model; bad input is refused in one line."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from gptoss.cli.main import main
from gptoss.errors import CheckpointError
from gptoss.model import Transformer
from gptoss.model.mxfp4 import quantize
from gptoss.model.quantize import quantize_checkpoint
from tests.customize.conftest import hf_model, rel_err


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, dense_checkpoint):
    """The dense checkpoint with every expert weight nudged off the MXFP4 grid."""
    out = tmp_path_factory.mktemp("finetuned")
    shutil.copytree(dense_checkpoint, out, dirs_exist_ok=True)
    tensors = load_file(out / "model.safetensors")
    g = torch.Generator().manual_seed(0)
    for name, t in tensors.items():
        if name.endswith(("gate_up_proj", "down_proj")):
            tensors[name] = t + 0.003 * torch.randn(t.shape, generator=g)
    save_file(tensors, out / "model.safetensors")
    return out


def test_quantized_checkpoint_loads_in_transformers_with_the_logits_of_gptoss(tmp_path, finetuned, capsys):
    out = tmp_path / "q"
    assert main(["quantize", str(finetuned), str(out), "--layout", "both", "--check-tokens", "32"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0 < report["logits_rel_err"] < 0.2  # moved by the rounding, not destroyed
    tokens = torch.randint(0, 199998, (48,), generator=torch.Generator().manual_seed(1))
    ours = Transformer.from_checkpoint(out, dtype=torch.float32)
    assert ours.experts == "mxfp4"
    with torch.no_grad():
        want = hf_model(out)(tokens[None]).logits[0]  # transformers dequantizes the MXFP4 on the CPU
    got = ours(tokens)
    assert rel_err(got, want) < 1e-4
    assert torch.equal(Transformer.from_checkpoint(out / "original", dtype=torch.float32)(tokens), got)
    # packed by round-to-nearest-even under the shared power-of-two scale, as the release
    dense = load_file(finetuned / "model.safetensors")["model.layers.1.mlp.experts.down_proj"]
    blocks, scales = quantize(dense[3].transpose(0, 1))
    assert torch.equal(ours.block[1].mlp.mlp2_weight.blocks[3], blocks)
    assert torch.equal(ours.block[1].mlp.mlp2_weight.scales[3], scales)


def test_sharded_output_has_an_index_and_loads(tmp_path, finetuned):
    out = quantize_checkpoint(finetuned, tmp_path / "q", max_shard_bytes=2**20)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    tokens = torch.arange(10)
    assert (
        rel_err(
            Transformer.from_checkpoint(out)(tokens), Transformer.from_checkpoint(finetuned, quantize="mxfp4")(tokens)
        )
        < 1e-6
    )


def test_an_mxfp4_input_is_refused(tmp_path, mxfp4_checkpoint):
    with pytest.raises(CheckpointError, match="already MXFP4"):
        quantize_checkpoint(mxfp4_checkpoint, tmp_path / "q")


def test_output_onto_the_input_is_refused(finetuned):
    with pytest.raises(CheckpointError, match="must differ from the input"):
        quantize_checkpoint(finetuned, finetuned)
