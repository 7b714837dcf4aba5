"""Rotary position embedding with YaRN scaling (NTK-by-parts) and its attention concentration.

gpt-oss: theta 150000, factor 32 over an initial context of 4096, beta_fast 32 / beta_slow 1, no
truncation of the ramp; cos and sin are multiplied by the concentration 0.1 * ln(factor) + 1.
Rotation is applied to the two halves of each head (not interleaved pairs).
"""

from __future__ import annotations

import math

import torch

from gptoss.model.config import ModelConfig


def yarn_inv_freq(config: ModelConfig, device=None) -> tuple[float, torch.Tensor]:
    """Returns ``(concentration, inv_freq [head_dim/2])``."""
    d = config.head_dim
    freq = config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d)
    if config.rope_scaling_factor <= 1.0:
        return 1.0, 1.0 / freq
    concentration = 0.1 * math.log(config.rope_scaling_factor) + 1.0
    d_half = d / 2
    ctx = config.initial_context_length
    low = d_half * math.log(ctx / (config.rope_ntk_beta * 2 * math.pi)) / math.log(config.rope_theta)
    high = d_half * math.log(ctx / (config.rope_ntk_alpha * 2 * math.pi)) / math.log(config.rope_theta)
    interpolation = 1.0 / (config.rope_scaling_factor * freq)
    extrapolation = 1.0 / freq
    ramp = (torch.arange(d_half, dtype=torch.float32, device=device) - low) / (high - low)
    mask = 1 - ramp.clamp(0, 1)
    return concentration, interpolation * (1 - mask) + extrapolation * mask


class RotaryEmbedding(torch.nn.Module):
    def __init__(self, config: ModelConfig, device=None):
        super().__init__()
        self.head_dim = config.head_dim
        concentration, inv_freq = yarn_inv_freq(config, device)
        self.concentration = concentration
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``positions`` (any shape, integer) -> cos, sin of shape ``positions.shape + (head_dim/2,)``, float32."""
        freqs = positions.to(torch.float32).unsqueeze(-1) * self.inv_freq
        return freqs.cos() * self.concentration, freqs.sin() * self.concentration

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate ``x [..., heads, head_dim]`` with ``cos/sin [..., head_dim/2]`` (broadcast over heads)."""
        cos = cos.unsqueeze(-2).to(x.dtype)
        sin = sin.unsqueeze(-2).to(x.dtype)
        x1, x2 = torch.chunk(x, 2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
