"""Checkpoints shared by the customization tests: a synthetic MXFP4 one and its dense-expert twin, which
transformers writes itself (dequantized on load, then ``save_pretrained``) as after a fine-tune."""

import pytest
import torch

from tests.helpers import checkpoint


@pytest.fixture(scope="session")
def mxfp4_checkpoint(tmp_path_factory):
    return checkpoint(tmp_path_factory.mktemp("mxfp4"), seed=7, num_hidden_layers=2)


@pytest.fixture(scope="session")
def dense_checkpoint(tmp_path_factory, mxfp4_checkpoint):
    from transformers import GptOssForCausalLM, Mxfp4Config

    out = tmp_path_factory.mktemp("dense")
    hf = GptOssForCausalLM.from_pretrained(mxfp4_checkpoint, dtype=torch.float32,
                                           quantization_config=Mxfp4Config(dequantize=True))
    hf.save_pretrained(out)
    return out


def hf_model(folder):
    from transformers import GptOssForCausalLM

    return GptOssForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())
