"""Fine-tuned checkpoints whose experts transformers saved as floats (``gate_up_proj`` / ``down_proj``
[experts, in, out], no ``_blocks`` / ``_scales``) load, run as transformers runs them, and can be packed
to MXFP4 on load; a broken one is refused in one line naming the tensor."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from gptoss.engine import LLM, SamplingParams
from gptoss.errors import CheckpointError
from gptoss.model import Transformer
from gptoss.model.moe import DenseExpertWeight
from gptoss.model.mxfp4 import MXFP4Weight
from tests.customize.conftest import hf_model, rel_err

TOKENS = torch.randint(0, 199998, (40,), generator=torch.Generator().manual_seed(3))


def test_dense_experts_match_transformers_logits_and_greedy(dense_checkpoint):
    ours = Transformer.from_checkpoint(dense_checkpoint, dtype=torch.float32)
    assert isinstance(ours.block[0].mlp.mlp1_weight, DenseExpertWeight)
    hf = hf_model(dense_checkpoint)
    with torch.no_grad():
        want = hf(TOKENS[None]).logits[0]
        hf_ids = hf.generate(TOKENS[None, :12], max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)[
            0, 12:
        ].tolist()
    assert rel_err(ours(TOKENS), want) < 1e-4
    out = LLM(ours, max_batch=2).generate(
        [TOKENS[:12].tolist()], SamplingParams(temperature=0, max_tokens=6, ignore_stop=True)
    )
    assert out[0].token_ids == hf_ids


def test_quantize_on_load_packs_dense_experts_back_to_the_released_bits(dense_checkpoint, mxfp4_checkpoint):
    packed = Transformer.from_checkpoint(dense_checkpoint, dtype=torch.float32, quantize="mxfp4")
    original = Transformer.from_checkpoint(mxfp4_checkpoint, dtype=torch.float32)
    assert isinstance(packed.block[1].mlp.mlp2_weight, MXFP4Weight)
    # the dense values are exactly MXFP4 values, so round-to-nearest-even gives the original codes back
    assert torch.equal(packed.block[1].mlp.mlp2_weight.blocks, original.block[1].mlp.mlp2_weight.blocks)
    assert torch.equal(packed(TOKENS), original(TOKENS))


def _broken(tmp_path, dense_checkpoint, edit):
    import shutil

    out = tmp_path / "broken"
    shutil.copytree(dense_checkpoint, out)
    tensors = load_file(out / "model.safetensors")
    edit(tensors)
    save_file(tensors, out / "model.safetensors")
    return out


def test_missing_expert_bias_is_named(tmp_path, dense_checkpoint):
    folder = _broken(tmp_path, dense_checkpoint, lambda t: t.pop("model.layers.1.mlp.experts.down_proj_bias"))
    with pytest.raises(CheckpointError, match=r"missing tensor model\.layers\.1\.mlp\.experts\.down_proj_bias"):
        Transformer.from_checkpoint(folder)


def test_transposed_expert_weight_is_named_with_the_expected_layout(tmp_path, dense_checkpoint):
    name = "model.layers.0.mlp.experts.gate_up_proj"
    folder = _broken(tmp_path, dense_checkpoint, lambda t: t.__setitem__(name, t[name].transpose(1, 2).contiguous()))
    with pytest.raises(
        CheckpointError,
        match=rf"tensor {name}: expected shape \[8, 64, 128\], found \[8, 128, 64\]"
        r".*\[experts, in, out\]",
    ):
        Transformer.from_checkpoint(folder)


def test_unknown_quantization_is_refused(dense_checkpoint):
    with pytest.raises(CheckpointError, match="unknown quantization 'int4'"):
        Transformer.from_checkpoint(dense_checkpoint, quantize="int4")
