"""Logits equal Hugging Face transformers' GptOssForCausalLM on the same MXFP4 checkpoint (float32),
and the original layout of the same weights gives the same logits."""

import pytest
import torch

from gptoss.model import Transformer
from tests.helpers import checkpoint

CONFIGS = {
    # window 16 over 150 tokens: many tokens fall out of the band on even layers
    "tiny-window16": dict(preset="tiny"),
    # the real 128-token window, GQA 8:2, sequences past the window
    "small-window128": dict(preset="small"),
    # top-2 of 4 experts, 3 layers (odd count), one KV head, wider intermediate
    "odd": dict(
        preset="tiny",
        num_hidden_layers=3,
        num_experts=4,
        experts_per_token=2,
        num_key_value_heads=1,
        intermediate_size=96,
        sliding_window=32,
    ),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers(tmp_path, name):
    from transformers import GptOssForCausalLM

    folder = checkpoint(tmp_path, layout="both", seed=11, **CONFIGS[name])
    tokens = torch.randint(0, 199998, (200,), generator=torch.Generator().manual_seed(5))

    ours = Transformer.from_checkpoint(folder, dtype=torch.float32)
    ours_orig = Transformer.from_checkpoint(folder / "original", dtype=torch.float32)
    hf = GptOssForCausalLM.from_pretrained(folder, dtype=torch.float32)
    hf.eval()
    with torch.no_grad():
        want = hf(tokens[None]).logits[0].float()
    got = ours(tokens)
    assert got.shape == (200, 201088)
    assert rel_err(got, want) < 1e-4
    # per position too: no position may drift (catches window/sink/rope errors hidden by averaging)
    per_pos = (got - want).norm(dim=-1) / want.norm(dim=-1)
    assert float(per_pos.max()) < 1e-4
    assert torch.equal(ours_orig(tokens), got)


def test_experts_are_dequantized_from_the_same_bits_as_transformers(tmp_path):
    """The packed expert tensors we keep, unpacked, equal transformers' dequantized parameters."""
    from transformers import GptOssForCausalLM

    folder = checkpoint(tmp_path, seed=3)
    ours = Transformer.from_checkpoint(folder, dtype=torch.float32)
    hf = GptOssForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ours_w = ours.block[1].mlp.mlp1_weight.dequantize(torch.arange(8), torch.float32)  # [E, 2I, H]
    hf_w = hf.model.layers[1].mlp.experts.gate_up_proj.detach()  # [E, H, 2I]
    assert torch.equal(ours_w.transpose(1, 2), hf_w)
