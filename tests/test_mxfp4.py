import itertools
import struct

import torch

from gptoss.model import mxfp4


def decode_e2m1(code: int) -> float:
    """E2M1 from its bit fields: sign | 2 exponent bits (bias 1) | 1 mantissa bit; exponent 0 is subnormal."""
    sign = -1.0 if code & 0b1000 else 1.0
    exp = (code >> 1) & 0b11
    man = code & 0b1
    if exp == 0:
        return sign * man * 0.5
    return sign * (1 + man / 2) * 2.0 ** (exp - 1)


def test_lut_is_the_e2m1_code_table():
    assert [decode_e2m1(c) for c in range(16)] == list(mxfp4.FP4_VALUES)


def test_unpack_matches_a_lut_decode_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 5, 2, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(100, 140, (3, 5, 2), dtype=torch.uint8, generator=g)
    scales[0, 0, 0] = 0  # 2**-127: subnormal in float32
    scales[0, 0, 1] = 254
    out = mxfp4.dequantize(blocks, scales, torch.float32)
    assert out.shape == (3, 5, 64)
    for e, r, col in itertools.product(range(3), range(5), range(64)):
        byte = int(blocks[e, r, col // 32, (col % 32) // 2])
        code = byte & 0x0F if col % 2 == 0 else byte >> 4  # low nibble first
        want = decode_e2m1(code) * 2.0 ** (int(scales[e, r, col // 32]) - 127)
        want32 = struct.unpack("f", struct.pack("f", want))[0]
        got = float(out[e, r, col])
        assert struct.pack("f", got) == struct.pack("f", want32), (e, r, col, got, want32)


def test_bf16_unpack_equals_float32_unpack():
    g = torch.Generator().manual_seed(1)
    blocks = torch.randint(0, 256, (4, 64, 2, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(110, 135, (4, 64, 2), dtype=torch.uint8, generator=g)
    assert torch.equal(
        mxfp4.dequantize(blocks, scales, torch.bfloat16).float(), mxfp4.dequantize(blocks, scales, torch.float32)
    )


def test_pack_then_unpack_of_representable_values_is_exact():
    g = torch.Generator().manual_seed(2)
    codes = torch.randint(0, 16, (7, 96), generator=g)
    exps = torch.randint(-20, 10, (7, 3), generator=g).float()
    lut = torch.tensor(mxfp4.FP4_VALUES)
    values = lut[codes].reshape(7, 3, 32)
    values[:, :, 0] = 6.0  # each block's largest magnitude pins its scale
    values = (values * torch.exp2(exps)[..., None]).reshape(7, 96)
    blocks, scales = mxfp4.quantize(values)
    assert blocks.shape == (7, 3, 16) and scales.shape == (7, 3)
    back = mxfp4.dequantize(blocks, scales, torch.float32)
    assert torch.equal(back, values)
    assert torch.equal(scales.int() - 127, exps.int())


def test_quantize_rounds_to_nearest_and_saturates():
    lut = torch.tensor(mxfp4.FP4_VALUES[:8])
    x = torch.linspace(-7.5, 7.5, 32 * 9)
    x[0] = 6.0  # keep the block scale at 2**0 so values map onto the E2M1 grid directly
    x = torch.cat([x[:32].clone().fill_(0) + x[:32], x[32:]])
    blocks, scales = mxfp4.quantize(x.reshape(9, 32))
    back = mxfp4.dequantize(blocks, scales, torch.float32).reshape(-1)
    scale = torch.exp2(scales.float() - 127).repeat_interleave(32)
    scaled = (x / scale).clamp(-6, 6)
    err = (back / scale - scaled).abs()
    nearest = (scaled.abs()[:, None] - lut[None, :]).abs().min(dim=1).values
    assert torch.allclose(err, nearest, atol=1e-6)


def test_packed_weights_stay_packed():
    from tests.helpers import tiny_model

    model = tiny_model()
    w = model.block[0].mlp.mlp1_weight
    assert w.blocks.dtype == torch.uint8 and w.scales.dtype == torch.uint8
    mem = model.memory_bytes()
    c = model.config
    expert_params = c.num_hidden_layers * c.num_experts * 3 * c.hidden_size * c.intermediate_size
    assert mem["mxfp4_experts"] * 8 / expert_params == 4.25


def test_ties_round_to_the_even_code():
    lut = torch.tensor(mxfp4.FP4_VALUES[:8])
    mids = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    xs = torch.cat(
        [
            torch.linspace(0, 7, 2001),
            mids,
            torch.nextafter(mids, torch.tensor(0.0)),
            torch.nextafter(mids, torch.tensor(9.0)),
        ]
    )
    xs = torch.cat([xs, -xs])
    codes = mxfp4._nearest_code(xs).long()
    dist = (xs.abs()[:, None] - lut[None, :]).abs()
    best = dist.min(dim=1).values
    assert torch.equal(dist[torch.arange(len(xs)), codes % 8], best)
    ties = (dist == best[:, None]).sum(dim=1) > 1
    assert int(ties.sum()) >= 14 and bool(((codes[ties] % 8) % 2 == 0).all())
    assert bool((codes[xs < 0] >= 8).all())
