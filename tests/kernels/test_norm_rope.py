"""Fused RMSNorm and RoPE + paged KV write (gptoss.kernels.norm_rope) against the model's own functions."""

import pytest
import torch

from gptoss.kernels.norm_rope import rms_norm, rope_store
from gptoss.model import ModelConfig
from gptoss.model.attention import rope_store_reference
from gptoss.model.norm import RMSNorm
from gptoss.model.rope import RotaryEmbedding
from tests.kernels.conftest import f32_tol, gpu_only, rel_err


@pytest.mark.parametrize("rows,width", [(1, 64), (7, 96), (3, 2880)])
def test_rms_norm(device, rows, width):
    norm = RMSNorm(width).to(device)
    with torch.no_grad():
        norm.scale.copy_(torch.randn(width))
    x = (torch.randn(rows, width) * 3).to(device)
    with torch.no_grad():
        assert rel_err(rms_norm(x, norm.scale, norm.eps), norm(x)) < f32_tol(device)


def test_rms_norm_low_precision(device, precision):
    dtype, tol = precision
    norm = RMSNorm(2880).to(device)
    x = torch.randn(5, 2880).to(device, dtype)
    with torch.no_grad():
        out = rms_norm(x, norm.scale, norm.eps)
        assert out.dtype == dtype and rel_err(out, norm(x.float())) < tol


def check_rope_store(device, dtype, tol, n, hq, hk, d):
    config = ModelConfig.preset("tiny").replace(head_dim=d, num_attention_heads=hq, num_key_value_heads=hk)
    rope = RotaryEmbedding(config, device=device)
    g = torch.Generator().manual_seed(0)
    positions = torch.randint(0, 5000, (n,), generator=g).to(device)
    cos, sin = rope.cos_sin(positions)
    qkv = torch.randn(n, (hq + 2 * hk) * d, generator=g).to(device, dtype)
    bs = 4
    blocks = n // bs + 5
    rows = torch.randperm(blocks * bs, generator=g)[:n].to(device)
    k_ref, v_ref = torch.zeros(blocks, bs, hk, d, device=device), torch.zeros(blocks, bs, hk, d, device=device)
    k_out, v_out = torch.zeros_like(k_ref, dtype=dtype), torch.zeros_like(v_ref, dtype=dtype)
    q_ref = rope_store_reference(qkv.float(), cos, sin, rows, k_ref, v_ref, hq, hk, d)
    q = rope_store(qkv, cos, sin, rows, k_out, v_out, hq, hk, d)
    assert q.dtype == dtype
    assert rel_err(q, q_ref) < tol and rel_err(k_out, k_ref) < tol and rel_err(v_out, v_ref) < tol


@pytest.mark.parametrize("n,hq,hk,d", [(5, 4, 2, 16), (3, 8, 1, 64)])
def test_rope_store(device, n, hq, hk, d):
    check_rope_store(device, torch.float32, f32_tol(device), n, hq, hk, d)


def test_rope_store_low_precision(device, precision):
    check_rope_store(device, *precision, 6, 4, 2, 16)


@gpu_only
def test_rope_store_gpt_oss_shapes(device):
    check_rope_store(device, torch.bfloat16, 1.6e-2, 2048, 64, 8, 64)
