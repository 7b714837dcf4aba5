"""The mixture-of-experts MLP: top-k router, softmax over the selected logits, clamped SwiGLU experts
whose weights stay packed in MXFP4 and are unpacked per selected expert on the fly."""

from __future__ import annotations

import torch

from gptoss.model.config import ModelConfig
from gptoss.model.lora import lora_hook
from gptoss.model.mxfp4 import MXFP4Weight
from gptoss.model.norm import RMSNorm


def swiglu(x: torch.Tensor, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    """gpt-oss SwiGLU on interleaved ``[glu0, lin0, glu1, lin1, ...]``: clamp, sigmoid gate, +1 on the linear half."""
    x_glu, x_linear = x[..., ::2], x[..., 1::2]
    x_glu = x_glu.clamp(max=limit)
    x_linear = x_linear.clamp(min=-limit, max=limit)
    return x_glu * torch.sigmoid(alpha * x_glu) * (x_linear + 1)


class DenseExpertWeight(torch.nn.Module):
    """Expert weights kept as floats (a fine-tuned checkpoint saved by transformers): ``weight [E, cols,
    rows]``, each expert's matrix input-major as transformers stores ``gate_up_proj`` / ``down_proj``, so
    the file's tensor is used as it is (memory-mapped on the CPU). Same interface as
    :class:`~gptoss.model.mxfp4.MXFP4Weight`: ``dequantize(experts)`` gives ``[..., rows, cols]``."""

    def __init__(self, num_experts: int, rows: int, cols: int, device=None, dtype=torch.float32):
        super().__init__()
        self.rows, self.cols = rows, cols
        self.register_buffer("weight", torch.zeros(num_experts, cols, rows, device=device, dtype=dtype))

    def dequantize(self, experts: torch.Tensor | int, dtype: torch.dtype) -> torch.Tensor:
        return self.weight[experts].transpose(-1, -2).to(dtype)

    def extra_repr(self) -> str:
        return f"experts={self.weight.shape[0]}, rows={self.rows}, cols={self.cols}, format=dense"


def expert_weight(experts: str, num_experts: int, rows: int, cols: int, device=None, dtype=torch.float32):
    """The expert-weight module of a format: ``mxfp4`` (packed) or ``dense``."""
    if experts == "dense":
        return DenseExpertWeight(num_experts, rows, cols, device=device, dtype=dtype)
    return MXFP4Weight(num_experts, rows, cols, device=device)


class MLPBlock(torch.nn.Module):
    """Pre-norm MoE with residual. Names mirror the original checkpoint: ``norm``, ``gate``,
    ``mlp1_weight`` / ``mlp1_bias`` (gate and up interleaved), ``mlp2_weight`` / ``mlp2_bias``.
    Expert weights are MXFP4 (the fast kernels' format) or dense floats (run by :func:`experts_reference`)."""

    def __init__(self, config: ModelConfig, device=None, dtype=torch.float32, experts: str = "mxfp4"):
        super().__init__()
        h, i, e = config.hidden_size, config.intermediate_size, config.num_experts
        self.experts_per_token = config.experts_per_token
        self.swiglu_alpha = config.swiglu_alpha
        self.swiglu_limit = config.swiglu_limit
        self.norm = RMSNorm(h, config.rms_norm_eps, device=device)
        self.gate = torch.nn.Linear(h, e, device=device, dtype=dtype)
        self.mlp1_weight = expert_weight(experts, e, 2 * i, h, device=device, dtype=dtype)
        self.mlp1_bias = torch.nn.Parameter(torch.zeros(e, 2 * i, device=device, dtype=dtype))
        self.mlp2_weight = expert_weight(experts, e, h, i, device=device, dtype=dtype)
        self.mlp2_bias = torch.nn.Parameter(torch.zeros(e, h, device=device, dtype=dtype))

    @property
    def expert_args(self) -> tuple:
        """What every experts implementation takes after the routing, in its order: the packed (or dense)
        weights and biases of both products, then SwiGLU's alpha and limit."""
        return (
            self.mlp1_weight,
            self.mlp1_bias,
            self.mlp2_weight,
            self.mlp2_bias,
            self.swiglu_alpha,
            self.swiglu_limit,
        )

    def route(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``t [N, hidden]`` -> (expert weights ``[N, k]``, expert indices ``[N, k]``)."""
        logits = self.gate(t)
        top = torch.topk(logits, k=self.experts_per_token, dim=-1, sorted=True)
        return torch.softmax(top.values.float(), dim=-1).to(t.dtype), top.indices

    def forward(self, x: torch.Tensor, ops=None) -> torch.Tensor:
        """``x`` plus the experts' output, through the backend ``ops`` (:mod:`gptoss.model.backend`;
        default: the reference). Dense experts, and a step whose adapters change the experts, take the
        reference path (the fast expert kernels read MXFP4 and know no adapters)."""
        lora = lora_hook(self)
        lora = lora if lora is not None and lora.experts_active else None
        if ops is None or lora is not None or not isinstance(self.mlp1_weight, MXFP4Weight):
            return self.forward_reference(x, lora)
        return ops.moe(self, x)

    def forward_reference(self, x: torch.Tensor, lora=None) -> torch.Tensor:
        t = self.norm(x)
        weights, indices = self.route(t)
        return experts_reference(t, weights, indices, *self.expert_args, residual=x, lora=lora)

    def forward_triton(self, x: torch.Tensor) -> torch.Tensor:
        """Fast path (Triton, see gptoss.kernels): fused RMSNorm, router, fused routing, grouped MXFP4 experts."""
        from gptoss.kernels.moe import moe_forward
        from gptoss.kernels.norm_rope import rms_norm

        t = rms_norm(x, self.norm.scale, self.norm.eps)
        return moe_forward(t, self.gate(t), self.experts_per_token, *self.expert_args, residual=x)

    def forward_cpu(self, x: torch.Tensor) -> torch.Tensor:
        """Fast path on the CPU (native kernels, see gptoss.kernels.cpu): router logits in float32, grouped
        MXFP4 experts with fused SwiGLU and combine, the residual added in float32."""
        from gptoss.kernels import cpu

        t = self.norm(x)
        logits = cpu.dense(self.gate, t)
        top = torch.topk(logits, k=self.experts_per_token, dim=-1, sorted=True)
        weights = torch.softmax(top.values, dim=-1)
        out = cpu.moe_experts(t, weights, top.indices, *self.expert_args, bf16_inputs=t.dtype == torch.bfloat16)
        return (x.float() + out).to(x.dtype)


def experts_reference(
    t: torch.Tensor,
    weights: torch.Tensor,
    indices: torch.Tensor,
    mlp1_weight: MXFP4Weight | DenseExpertWeight,
    mlp1_bias: torch.Tensor,
    mlp2_weight: MXFP4Weight | DenseExpertWeight,
    mlp2_bias: torch.Tensor,
    alpha: float = 1.702,
    limit: float = 7.0,
    residual: torch.Tensor | None = None,
    lora=None,
) -> torch.Tensor:
    """The experts of each token, weighted and summed: ``t [N, hidden]``, routing ``weights, indices [N, k]``.
    Each selected expert is unpacked from MXFP4 on the fly. Returns ``[N, hidden]`` (plus ``residual``).
    ``lora``: a :class:`~gptoss.model.lora.LayerLora` adding its adapters' expert deltas per token.
    The reference that :func:`gptoss.kernels.moe.moe_experts` must match."""
    out = torch.zeros_like(t)
    for expert in torch.unique(indices).tolist():
        token, rank = torch.where(indices == expert)
        w1 = mlp1_weight.dequantize(expert, t.dtype)
        h = torch.nn.functional.linear(t[token], w1, mlp1_bias[expert])
        if lora is not None:
            h = lora.expert(1, expert, t[token], token, h)
        h = swiglu(h, alpha, limit)
        w2 = mlp2_weight.dequantize(expert, t.dtype)
        y = torch.nn.functional.linear(h, w2, mlp2_bias[expert])
        if lora is not None:
            y = lora.expert(2, expert, h, token, y)
        out.index_add_(0, token, y * weights[token, rank, None])
    return out if residual is None else residual + out
