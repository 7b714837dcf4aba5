"""MXFP4 (OCP Microscaling): 32 FP4 E2M1 values share one E8M0 scale (bias 127); 4.25 bits a parameter.

Storage, as in both checkpoint layouts: ``blocks`` uint8 ``[..., rows, cols/32, 16]`` holding two E2M1
codes a byte, low nibble first (element 2j in the low nibble, 2j+1 in the high), and ``scales`` uint8
``[..., rows, cols/32]`` holding the biased exponent. The value of code ``c`` in a block with scale ``s``
is ``FP4_VALUES[c] * 2**(s - 127)``.
"""

from __future__ import annotations

import torch

BLOCK_SIZE = 32
BYTES_PER_BLOCK = BLOCK_SIZE // 2
SCALE_BIAS = 127

# E2M1: sign bit, 2 exponent bits, 1 mantissa bit. Codes 0-7 positive, 8-15 their negatives.
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
FP4_MAX = 6.0
E2M1_EMAX = 2  # exponent of the largest E2M1 value (6 = 1.5 * 2**2)


# Byte -> the two values it packs (low nibble first), for a single gather per byte.
_BYTE_VALUES = torch.tensor([[FP4_VALUES[b & 0x0F], FP4_VALUES[b >> 4]] for b in range(256)], dtype=torch.float32)


def unpack_codes(blocks: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., G, 16]`` -> E2M1 codes uint8 ``[..., G, 32]`` (low nibble first)."""
    lo = blocks & 0x0F
    hi = blocks >> 4
    return torch.stack((lo, hi), dim=-1).flatten(-2)


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Unpack MXFP4 to ``dtype``: ``[..., rows, G, 16]`` + ``[..., rows, G]`` -> ``[..., rows, G*32]``.

    Exact for float32 and bfloat16 (E2M1 values times a power of two); float16 is computed in float32
    first since its narrow exponent range cannot hold every scale.
    """
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise TypeError(f"MXFP4 blocks and scales must be uint8, got {blocks.dtype} and {scales.dtype}")
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BYTES_PER_BLOCK:
        raise ValueError(f"MXFP4 shapes disagree: blocks {tuple(blocks.shape)}, scales {tuple(scales.shape)}")
    work = dtype if dtype in (torch.float32, torch.bfloat16) else torch.float32
    table = _BYTE_VALUES.to(device=blocks.device, dtype=work)
    values = table.index_select(0, blocks.reshape(-1).long()).reshape(*scales.shape, BLOCK_SIZE)
    scale = torch.exp2(scales.to(torch.float32) - SCALE_BIAS).to(work)
    return (values * scale.unsqueeze(-1)).flatten(-2).to(dtype)


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Round ``weight [..., cols]`` (cols a multiple of 32) to MXFP4; returns ``(blocks, scales)``.

    The shared scale of each block is ``2**(floor(log2(amax)) - 2)`` as the OCP spec prescribes, so the
    largest magnitude lands in [4, 8) before rounding; each value then rounds to the nearest E2M1 value
    (ties to the even code), saturating at +-6.
    """
    if weight.shape[-1] % BLOCK_SIZE:
        raise ValueError(f"last dimension {weight.shape[-1]} is not a multiple of {BLOCK_SIZE}")
    w = (
        weight.detach()
        .to(torch.float32)
        .contiguous()
        .reshape(*weight.shape[:-1], weight.shape[-1] // BLOCK_SIZE, BLOCK_SIZE)
    )
    amax = w.abs().amax(dim=-1)
    exp = torch.where(amax > 0, torch.floor(torch.log2(amax.clamp_min(torch.finfo(torch.float32).tiny))), 0.0)
    exp = (exp - E2M1_EMAX).clamp(-SCALE_BIAS, 127)
    scaled = w / torch.exp2(exp).unsqueeze(-1)
    codes = _nearest_code(scaled)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return packed.to(torch.uint8).contiguous(), (exp + SCALE_BIAS).to(torch.uint8).contiguous()


def quantize_experts(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense expert weights as transformers stores them, ``[E, in, out]``, to MXFP4 ``(blocks [E, out,
    in/32, 16], scales [E, out, in/32])``, one expert at a time (bounded memory)."""
    e, cols, rows = weight.shape
    if cols % BLOCK_SIZE:
        raise ValueError(f"expert input dimension {cols} is not a multiple of {BLOCK_SIZE}")
    blocks = torch.empty(e, rows, cols // BLOCK_SIZE, BYTES_PER_BLOCK, dtype=torch.uint8)
    scales = torch.empty(e, rows, cols // BLOCK_SIZE, dtype=torch.uint8)
    for x in range(e):
        blocks[x], scales[x] = quantize(weight[x].transpose(0, 1).contiguous())
    return blocks, scales


# Midpoints between consecutive E2M1 magnitudes. A value exactly on a midpoint must round to the even
# code: midpoints below an even code stay as they are (a tie is not above them: lower, even code), while
# those below an odd code move down one ulp (a tie is above them: upper, even code).
_MIDPOINTS = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
_BOUNDS = torch.tensor(
    [m if k % 2 == 0 else float(torch.nextafter(torch.tensor(m), torch.tensor(0.0))) for k, m in enumerate(_MIDPOINTS)],
    dtype=torch.float32,
)


def _nearest_code(x: torch.Tensor) -> torch.Tensor:
    """E2M1 code of the nearest representable value (saturating at 6), ties to the even code."""
    idx = torch.bucketize(x.abs(), _BOUNDS.to(x.device), out_int32=True)
    return idx.to(torch.uint8) | (torch.signbit(x).to(torch.uint8) << 3)


class MXFP4Weight(torch.nn.Module):
    """Expert weights kept packed: ``blocks [E, rows, cols/32, 16]`` and ``scales [E, rows, cols/32]``.

    ``dequantize(experts)`` unpacks only the selected experts, on the fly.
    """

    def __init__(self, num_experts: int, rows: int, cols: int, device: torch.device | str | None = None):
        super().__init__()
        self.rows, self.cols = rows, cols
        groups = cols // BLOCK_SIZE
        self.register_buffer(
            "blocks", torch.zeros(num_experts, rows, groups, BYTES_PER_BLOCK, dtype=torch.uint8, device=device)
        )
        self.register_buffer("scales", torch.zeros(num_experts, rows, groups, dtype=torch.uint8, device=device))

    def dequantize(self, experts: torch.Tensor | int, dtype: torch.dtype) -> torch.Tensor:
        return dequantize(self.blocks[experts], self.scales[experts], dtype)

    def extra_repr(self) -> str:
        return f"experts={self.blocks.shape[0]}, rows={self.rows}, cols={self.cols}, format=mxfp4"
