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
    hf = GptOssForCausalLM.from_pretrained(
        mxfp4_checkpoint, dtype=torch.float32, quantization_config=Mxfp4Config(dequantize=True)
    )
    hf.save_pretrained(out)
    return out


def hf_model(folder):
    from transformers import GptOssForCausalLM

    return GptOssForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def make_adapter(base, out, seed: int, target_modules=(), target_parameters=(), r: int = 4, alpha: int = 8, **extra):
    """A PEFT LoRA adapter for ``base`` with random A and B (so that it changes the output), saved by PEFT."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=list(target_modules) or None,
        target_parameters=list(target_parameters) or None,
        init_lora_weights=False,
        **extra,
    )
    peft_model = get_peft_model(hf_model(base), config)
    with torch.no_grad():  # keep the update moderate: the tests compare outputs, not noise
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.5)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def adapters(tmp_path_factory, dense_checkpoint):
    """``attn``: q, k, v, o; ``experts``: v_proj and both expert parameters (the cookbook's targets);
    ``gate_up``: only the experts' gate_up_proj (PEFT stores it unnested); ``rs``: rank 2, rsLoRA."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        "attn": make_adapter(dense_checkpoint, root / "attn", 1, ["q_proj", "k_proj", "v_proj", "o_proj"]),
        "experts": make_adapter(
            dense_checkpoint, root / "experts", 2, ["v_proj"], ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
        ),
        "gate_up": make_adapter(dense_checkpoint, root / "gate_up", 3, [], ["mlp.experts.gate_up_proj"], r=2),
        "rs": make_adapter(dense_checkpoint, root / "rs", 4, ["q_proj", "o_proj"], r=2, alpha=3, use_rslora=True),
    }
