"""MoE kernels (gptoss.kernels.moe) against the reference experts (gptoss.model.moe.experts_reference)."""

import pytest
import torch

from gptoss.kernels.moe import moe_experts, sort_by_expert
from gptoss.model.moe import experts_reference
from gptoss.model.mxfp4 import MXFP4Weight, quantize
from tests.kernels.conftest import f32_tol, gpu_only, rel_err


def make_experts(num_experts, hidden, inter, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)

    def packed(rows, cols):
        w = MXFP4Weight(num_experts, rows, cols)
        w.blocks, w.scales = (t.to(device) for t in quantize(torch.randn(num_experts, rows, cols, generator=g) * 0.05))
        return w

    w1, w2 = packed(2 * inter, hidden), packed(hidden, inter)
    b1 = (torch.randn(num_experts, 2 * inter, generator=g) * 0.5).to(device, dtype)
    b2 = (torch.randn(num_experts, hidden, generator=g) * 0.1).to(device, dtype)
    return w1, b1, w2, b2


def routing(n, num_experts, k, device, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, num_experts, generator=g)
    top = logits.topk(k, dim=-1)
    return torch.softmax(top.values, -1).to(device, dtype), top.indices.to(device)


def test_sort_by_expert_groups_pairs_and_pads_blocks():
    """Pure torch (runs without Triton): each padded block holds pairs of one expert only."""
    g = torch.Generator().manual_seed(0)
    for n, e, k, bm in [(1, 32, 4, 16), (7, 8, 2, 4), (50, 4, 4, 16), (33, 128, 4, 32)]:
        indices = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(n)])
        pair, block_expert = sort_by_expert(indices, e, bm)
        assert pair.numel() == block_expert.numel() * bm
        assert pair.numel() >= n * k + min(e, n * k) * (bm - 1)  # any routing fits
        got = pair[pair >= 0]
        assert sorted(got.tolist()) == list(range(n * k))  # every pair exactly once
        flat = indices.reshape(-1)
        for b, ex in enumerate(block_expert.tolist()):
            rows = pair[b * bm : (b + 1) * bm]
            rows = rows[rows >= 0]
            if ex == e:
                assert rows.numel() == 0  # unused blocks only at the end
            else:
                assert bool((flat[rows.long()] == ex).all())
        # pairs of one expert keep token order (stable), and used blocks come first
        used = (block_expert < e).sum()
        assert bool((block_expert[:used] < e).all()) and bool((block_expert[used:] == e).all())


@pytest.mark.parametrize(
    "n,num_experts,k,hidden,inter",
    [
        (1, 8, 4, 64, 64),  # decode, one token
        (5, 4, 4, 64, 96),  # every expert chosen by several tokens; intermediate not a power of two
        (37, 8, 2, 96, 64),  # blocks partly filled, padding rows
    ],
)
def test_moe_experts_match_reference(device, n, num_experts, k, hidden, inter):
    check_moe(device, torch.float32, f32_tol(device), n, num_experts, k, hidden, inter)


@pytest.mark.parametrize("n,num_experts,k,hidden,inter", [(1, 8, 4, 64, 64), (9, 16, 1, 32, 32)])
def test_moe_experts_match_reference_in_low_precision(device, precision, n, num_experts, k, hidden, inter):
    dtype, tol = precision
    check_moe(device, dtype, tol, n, num_experts, k, hidden, inter, residual=False)


def check_moe(device, dtype, tol, n, num_experts, k, hidden, inter, residual=True):
    w1, b1, w2, b2 = make_experts(num_experts, hidden, inter, device, dtype)
    weights, indices = routing(n, num_experts, k, device, dtype)
    t = torch.randn(n, hidden, generator=torch.Generator().manual_seed(2)).to(device, dtype)
    x = torch.randn(n, hidden, generator=torch.Generator().manual_seed(3)).to(device, dtype) if residual else None
    ref = experts_reference(
        t.float(), weights.float(), indices, w1, b1.float(), w2, b2.float(), residual=None if x is None else x.float()
    )
    out = moe_experts(t, weights, indices, w1, b1, w2, b2, residual=x)
    assert out.dtype == dtype and out.shape == (n, hidden)
    assert rel_err(out, ref) < tol


def test_moe_clamps_swiglu_inputs(device):
    """Large activations hit both SwiGLU clamps (gate <= 7, linear in [-7, 7])."""
    w1, b1, w2, b2 = make_experts(4, 64, 64, device, torch.float32)
    b1 = b1 * 40  # pre-activations far beyond the limit
    weights, indices = routing(6, 4, 2, device, torch.float32)
    t = torch.randn(6, 64, generator=torch.Generator().manual_seed(4)).to(device)
    ref = experts_reference(t, weights, indices, w1, b1, w2, b2)
    assert rel_err(moe_experts(t, weights, indices, w1, b1, w2, b2), ref) < 2e-3


def test_moe_of_no_tokens(device):
    w1, b1, w2, b2 = make_experts(4, 32, 32, device, torch.float32)
    t = torch.zeros(0, 32, device=device)
    out = moe_experts(t, t.new_zeros(0, 2), torch.zeros(0, 2, dtype=torch.long, device=device), w1, b1, w2, b2)
    assert out.shape == (0, 32)


@gpu_only
@pytest.mark.parametrize("n", [1, 16, 64, 2048])
def test_moe_experts_gpt_oss_20b_shapes(device, n):
    """One gpt-oss-20b MoE layer (32 experts, 2880 wide, top-4) in bf16 at decode and prefill sizes."""
    w1, b1, w2, b2 = make_experts(32, 2880, 2880, device, torch.bfloat16)
    weights, indices = routing(n, 32, 4, device, torch.bfloat16)
    t = torch.randn(n, 2880, generator=torch.Generator().manual_seed(5)).to(device, torch.bfloat16)
    ref = experts_reference(t.float(), weights.float(), indices, w1, b1.float(), w2, b2.float(), residual=t.float())
    assert rel_err(moe_experts(t, weights, indices, w1, b1, w2, b2, residual=t), ref) < 1.6e-2


@pytest.mark.parametrize(
    "n,num_experts,k,block_m",
    [
        (1, 32, 4, 16),  # gpt-oss-20b decode
        (64, 32, 4, 16),  # batch 64
        (13, 128, 4, 16),  # gpt-oss-120b
        (3, 5, 3, 4),  # k and E not powers of two
        (300, 32, 4, 64),  # too big for one program: the torch path
    ],
)
def test_route_equals_topk_softmax_and_sort(device, n, num_experts, k, block_m):
    from gptoss.kernels.moe import route

    logits = torch.randn(n, num_experts, generator=torch.Generator().manual_seed(n)).to(device)
    weights, indices, pair, block_expert = route(logits, k, block_m)
    top = torch.topk(logits, k)
    want_pair, want_blocks = sort_by_expert(top.indices, num_experts, block_m)
    assert torch.equal(indices.long(), top.indices)
    assert torch.allclose(weights, torch.softmax(top.values.float(), -1), atol=1e-6)
    assert torch.equal(pair, want_pair) and torch.equal(block_expert, want_blocks)


def test_moe_forward_equals_the_reference_block(device):
    """MLPBlock's fast path (norm, router, fused routing, experts) against its reference forward."""
    from gptoss.kernels.moe import moe_forward
    from tests.helpers import tiny_model

    block = tiny_model(seed=6).block[1].mlp.to(device)
    x = torch.randn(9, 64, generator=torch.Generator().manual_seed(7)).to(device)
    with torch.no_grad():
        want = block(x)
        t = block.norm(x)
        got = moe_forward(
            t,
            block.gate(t),
            block.experts_per_token,
            block.mlp1_weight,
            block.mlp1_bias,
            block.mlp2_weight,
            block.mlp2_bias,
            block.swiglu_alpha,
            block.swiglu_limit,
            residual=x,
        )
    assert rel_err(got, want) < f32_tol(device)
