"""Paged attention with sinks (gptoss.kernels.attention) against paged_attention_reference, which itself is
held equal to the slot-cache model path in test_paged_cache.py."""

import pytest
import torch

from gptoss.kernels.attention import paged_attention
from gptoss.model.attention import paged_attention_reference
from tests.kernels.conftest import f32_tol, gpu_only, rel_err


def make_case(starts, lens, hq, hk, d, block_size, device, dtype, seed=0):
    """Pages holding random keys at shuffled physical blocks, one block table row per sequence."""
    g = torch.Generator().manual_seed(seed)
    kv = [s + n for s, n in zip(starts, lens)]
    width = max(-(-k // block_size) for k in kv)
    num_blocks = 1 + len(starts) * width
    perm = (torch.randperm(num_blocks - 1, generator=g) + 1).view(len(starts), width)
    pages = lambda: (torch.randn(num_blocks, block_size, hk, d, generator=g)).to(device, dtype)  # noqa: E731
    k, v = pages(), pages()
    n = sum(lens)
    q = torch.randn(n, hq, d, generator=g).to(device, dtype)
    sinks = torch.randn(hq, generator=g).to(device)
    cu = torch.tensor([sum(lens[:i]) for i in range(len(lens))], device=device)
    ints = lambda v: torch.tensor(v, device=device)  # noqa: E731
    return q, k, v, perm.to(device), cu, ints(lens), ints(kv), sinks


def check(starts, lens, hq, hk, d, block_size, window, device, dtype, tol, **kw):
    q, k, v, table, cu, q_lens, kv_lens, sinks = make_case(starts, lens, hq, hk, d, block_size, device, dtype)
    args = (table, cu, q_lens, kv_lens, sinks, d**-0.5, window, max(lens))
    ref = paged_attention_reference(q.float(), k.float(), v.float(), *args)
    out = paged_attention(q, k, v, *args, **kw)
    assert out.shape == (sum(lens), hq * d) and out.dtype == dtype
    assert rel_err(out, ref) < tol


@pytest.mark.parametrize("window", [0, 8])
@pytest.mark.parametrize("hq,hk", [(4, 2), (4, 1), (2, 2)])
def test_prefill_over_cached_prefix(device, window, hq, hk):
    """Mixed batch: a fresh prompt, a chunk after a cached prefix longer than the window, a decode."""
    check([0, 21, 6], [11, 5, 1], hq, hk, 16, 4, window, device, torch.float32, f32_tol(device))


@pytest.mark.parametrize("window", [0, 8])
@pytest.mark.parametrize("splits", [1, 3])
def test_decode_split_k(device, window, splits):
    """One query per sequence; keys split in 1 or 3 slices (some empty: the short sequences)."""
    check([0, 5, 40, 17], [1, 1, 1, 1], 8, 2, 16, 4, window, device, torch.float32, f32_tol(device), num_splits=splits)


def test_low_precision(device, precision):
    dtype, tol = precision
    check([0, 9], [13, 3], 4, 2, 16, 8, 0, device, dtype, tol)
    check([3, 30], [1, 1], 4, 2, 16, 8, 8, device, dtype, tol, num_splits=2)


@gpu_only
@pytest.mark.parametrize(
    "starts,lens,window",
    [
        ([0], [2048], 0),
        ([0], [2048], 128),  # 2k prefill, dense and banded
        ([1000, 3000], [300, 1], 128),  # chunk after a prefix, banded
        ([2048] * 64, [1] * 64, 0),
        ([4000], [1], 0),  # decode: batch 64, and batch 1 long context
    ],
)
def test_gpt_oss_shapes(device, starts, lens, window):
    check(starts, lens, 64, 8, 64, 16, window, device, torch.bfloat16, 1.6e-2)
