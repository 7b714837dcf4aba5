"""RMSNorm, computed in float32 (eps 1e-5), as gpt-oss applies before each block and at the end."""

import torch


class RMSNorm(torch.nn.Module):
    def __init__(self, num_features: int, eps: float = 1e-5, device=None):
        super().__init__()
        self.eps = eps
        self.scale = torch.nn.Parameter(torch.ones(num_features, device=device, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.float()
        t = t * torch.rsqrt(torch.mean(t * t, dim=-1, keepdim=True) + self.eps)
        return (t * self.scale).to(x.dtype)
