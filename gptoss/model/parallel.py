"""The gpt-oss Transformer sharded over the ranks of a ``torch.distributed`` process group.

* Attention by heads (``heads=True``): rank ``r`` of ``N`` holds query heads ``[r*HQ/N, (r+1)*HQ/N)`` and
  the key/value heads they read, with their rows of ``qkv`` (weight and bias), their sinks and their
  columns of ``out``; the partial outputs are summed (all-reduce) before ``out``'s bias. The KV cache of a
  rank holds only its KV heads (the sharded model's ``config`` has the local head counts).
* Experts (``experts=True``, expert parallel): rank ``r`` holds experts ``[r*E/N, (r+1)*E/N)``. The router
  is replicated, so every rank routes exactly as the single-process model; each computes its own experts'
  weighted outputs for the tokens that chose them, and an all-reduce adds them up.
* Embedding and unembedding by vocabulary: a rank holds ``ceil(V/N)`` rows (the last one fewer); embedding
  rows are summed over ranks (each token's row lives on one rank), logits gathered (all-gather).
* RMSNorm, the router and RoPE are replicated.

Module and parameter names are those of :class:`~gptoss.model.transformer.Transformer`; each rank reads
only its own slices of the checkpoint (``safetensors``' ``get_slice``), MXFP4 blocks and scales sliced
along the expert dimension without unpacking. The single-process model stays the reference the sharded
one must match (``tests/test_parallel.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from gptoss.errors import CheckpointError, GptossError
from gptoss.model.config import ModelConfig
from gptoss.model.moe import MLPBlock, swiglu
from gptoss.model.mxfp4 import MXFP4Weight
from gptoss.model.rope import RotaryEmbedding
from gptoss.model.transformer import Transformer

Ranges = list[tuple[int, int]]


@dataclass(frozen=True)
class Shard:
    """Which part of the model this rank holds: rank ``rank`` of ``world``; attention split by heads
    (``heads``), experts split across ranks (``experts``); the vocabulary is always split."""

    rank: int
    world: int
    heads: bool = True
    experts: bool = True
    group: Any = None  # the process group (None: the default one)

    def part(self, n: int) -> tuple[int, int]:
        """This rank's ``[lo, hi)`` of ``n`` items split evenly (``n`` divisible by ``world``)."""
        size = n // self.world
        return self.rank * size, (self.rank + 1) * size

    def vocab_part(self, n: int) -> tuple[int, int]:
        """This rank's ``[lo, hi)`` of the vocabulary: ``ceil(n / world)`` rows, the last rank fewer."""
        size = -(-n // self.world)
        return min(n, self.rank * size), min(n, (self.rank + 1) * size)

    def check(self, config: ModelConfig) -> None:
        if not 0 <= self.rank < self.world:
            raise GptossError(f"rank {self.rank} is outside the world of {self.world} ranks")
        if self.heads and config.num_key_value_heads % self.world:
            raise GptossError(
                f"tensor parallel size {self.world} does not divide the {config.num_key_value_heads} "
                f"KV heads (attention split by heads needs a divisor, at most {config.num_key_value_heads})"
            )
        if self.experts and config.num_experts % self.world:
            raise GptossError(f"tensor parallel size {self.world} does not divide the {config.num_experts} experts")

    def local_config(self, config: ModelConfig) -> ModelConfig:
        """The config a rank's attention and KV cache see: its share of the heads."""
        if not self.heads or self.world == 1:
            return config
        return config.replace(
            num_attention_heads=config.num_attention_heads // self.world,
            num_key_value_heads=config.num_key_value_heads // self.world,
        )

    def slices(self, config: ModelConfig, name: str) -> tuple[int, Ranges] | None:
        """The ``(dim, ranges)`` of canonical tensor ``name`` this rank holds; ``None``: all of it."""
        if name in ("embedding.weight", "unembedding.weight"):
            return 0, [self.vocab_part(config.vocab_size)]
        suffix = name.split(".", 2)[2] if name.startswith("block.") else ""
        d, hq, hk = config.head_dim, config.num_attention_heads, config.num_key_value_heads
        if self.heads and suffix in ("attn.qkv.weight", "attn.qkv.bias"):
            (q0, q1), (k0, k1) = self.part(hq), self.part(hk)
            return 0, [(q0 * d, q1 * d), ((hq + k0) * d, (hq + k1) * d), ((hq + hk + k0) * d, (hq + hk + k1) * d)]
        if self.heads and suffix == "attn.sinks":
            return 0, [self.part(hq)]
        if self.heads and suffix == "attn.out.weight":
            q0, q1 = self.part(hq)
            return 1, [(q0 * d, q1 * d)]
        if self.experts and suffix.startswith(("mlp.mlp1_", "mlp.mlp2_")):
            return 0, [self.part(config.num_experts)]
        return None


# ----------------------------------------------------------------------------- parallel layers
def _all_reduce(t: torch.Tensor, group) -> torch.Tensor:
    dist.all_reduce(t, group=group)
    return t


class VocabParallelEmbedding(torch.nn.Module):
    """Embedding rows ``[lo, hi)`` of the vocabulary; a token's row comes from the rank holding it."""

    def __init__(self, shard: Shard, vocab: int, hidden: int, device=None, dtype=torch.float32):
        super().__init__()
        self.group = shard.group
        self.lo, self.hi = shard.vocab_part(vocab)
        self.weight = torch.nn.Parameter(
            torch.zeros(self.hi - self.lo, hidden, device=device, dtype=dtype), requires_grad=False
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        local = tokens - self.lo
        inside = (local >= 0) & (local < self.hi - self.lo)
        rows = torch.nn.functional.embedding(local.clamp(0, max(self.hi - self.lo - 1, 0)), self.weight)
        return _all_reduce(rows * inside[:, None].to(rows.dtype), self.group)


class VocabParallelUnembedding(torch.nn.Module):
    """Unembedding rows ``[lo, hi)``: each rank computes its logits, an all-gather joins them."""

    def __init__(self, shard: Shard, vocab: int, hidden: int, device=None, dtype=torch.float32):
        super().__init__()
        self.group, self.world, self.vocab = shard.group, shard.world, vocab
        self.lo, self.hi = shard.vocab_part(vocab)
        self.part = -(-vocab // shard.world)
        self.weight = torch.nn.Parameter(
            torch.zeros(self.hi - self.lo, hidden, device=device, dtype=dtype), requires_grad=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = torch.nn.functional.linear(x, self.weight)
        if local.shape[-1] < self.part:  # the last rank's share is short: pad to the common size
            local = torch.nn.functional.pad(local, (0, self.part - local.shape[-1]))
        parts = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(parts, local.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)[..., : self.vocab]


class RowParallelLinear(torch.nn.Module):
    """A linear layer whose input features are split over ranks: partial products are summed
    (all-reduce), then the (replicated) bias is added once."""

    def __init__(self, shard: Shard, in_local: int, out_features: int, device=None, dtype=torch.float32):
        super().__init__()
        self.group = shard.group
        self.weight = torch.nn.Parameter(
            torch.zeros(out_features, in_local, device=device, dtype=dtype), requires_grad=False
        )
        self.bias = torch.nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _all_reduce(torch.nn.functional.linear(x, self.weight), self.group) + self.bias


class ExpertParallelMLP(MLPBlock):
    """The MoE block holding experts ``[lo, hi)``: replicated router, local experts, all-reduce."""

    def __init__(self, config: ModelConfig, shard: Shard, device=None, dtype=torch.float32):
        super().__init__(config, device="meta", dtype=dtype)
        h, i = config.hidden_size, config.intermediate_size
        self.group = shard.group
        self.lo, self.hi = shard.part(config.num_experts)
        e = self.hi - self.lo
        self.norm = type(self.norm)(h, config.rms_norm_eps, device=device)
        self.gate = torch.nn.Linear(h, config.num_experts, device=device, dtype=dtype)
        self.mlp1_weight = MXFP4Weight(e, 2 * i, h, device=device)
        self.mlp1_bias = torch.nn.Parameter(torch.zeros(e, 2 * i, device=device, dtype=dtype))
        self.mlp2_weight = MXFP4Weight(e, h, i, device=device)
        self.mlp2_bias = torch.nn.Parameter(torch.zeros(e, h, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, ops=None) -> torch.Tensor:
        """(Any backend ``ops``: the shards run this one plain-torch path.) Each token's ``k`` weighted expert
        outputs are computed on the ranks holding those experts into ``[N, k, hidden]`` (zeros elsewhere),
        summed over ranks (exact: one rank holds each entry), then added up in ascending expert order as
        :func:`~gptoss.model.moe.experts_reference` does, so the combine rounds exactly as the single-process
        model's."""
        t = self.norm(x)
        weights, indices = self.route(t)
        n, k = indices.shape
        parts = t.new_zeros(n, k, t.shape[-1])
        local = indices - self.lo
        mine = (local >= 0) & (local < self.hi - self.lo)
        for expert in torch.unique(local[mine]).tolist():
            token, slot = torch.where(local == expert)
            w1 = self.mlp1_weight.dequantize(expert, t.dtype)
            hidden = swiglu(
                torch.nn.functional.linear(t[token], w1, self.mlp1_bias[expert]), self.swiglu_alpha, self.swiglu_limit
            )
            y = torch.nn.functional.linear(hidden, self.mlp2_weight.dequantize(expert, t.dtype), self.mlp2_bias[expert])
            parts[token, slot] = y * weights[token, slot, None]
        _all_reduce(parts, self.group)
        order = indices.argsort(dim=1)
        parts = parts.gather(1, order[:, :, None].expand(-1, -1, parts.shape[-1]))
        out = torch.zeros_like(t)
        for j in range(k):
            out += parts[:, j]
        return x + out


# ----------------------------------------------------------------------------- the sharded model
class ShardedTransformer(Transformer):
    """One rank's part of the model; every rank runs the same steps in the same order. ``config`` is the
    rank's local view (its heads); ``full_config`` the whole model's."""

    def __init__(self, config: ModelConfig, shard: Shard, device=None, dtype: torch.dtype = torch.float32):
        shard.check(config)
        super().__init__(shard.local_config(config), device="meta", dtype=dtype)
        self.full_config, self.shard = config, shard
        h, v = config.hidden_size, config.vocab_size
        self.embedding = VocabParallelEmbedding(shard, v, h, device, dtype)
        self.unembedding = VocabParallelUnembedding(shard, v, h, device, dtype)
        local = self.config
        for block in self.block:
            if shard.heads and shard.world > 1:
                block.attn.out = RowParallelLinear(shard, local.head_dim * local.num_attention_heads, h, device, dtype)
            if shard.experts and shard.world > 1:
                block.mlp = ExpertParallelMLP(config, shard, device, dtype)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        shard: Shard,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        layout: str = "auto",
        progress: bool = False,
    ) -> "ShardedTransformer":
        """Read this rank's slices of a checkpoint (either layout, or a hub id)."""
        from gptoss.model.checkpoint import CheckpointReader, canonical_shapes, locate
        from gptoss.model.hub import resolve_model_path

        reader = CheckpointReader(locate(resolve_model_path(str(path)), layout))
        if reader.experts != "mxfp4":
            raise CheckpointError(
                f"{path}: tensor parallelism needs MXFP4 experts; this checkpoint's are dense "
                "(pack them first: gptoss quantize IN OUT)"
            )
        config = reader.config
        model = cls(config, shard, device="meta", dtype=dtype)
        names = list(canonical_shapes(config))
        if progress:
            from tqdm import tqdm

            names = tqdm(names, desc=f"loading rank {shard.rank}'s weights", unit="tensor", disable=None)
        for name in names:
            spec = shard.slices(config, name)
            tensor = reader.get(name) if spec is None else reader.get_slices(name, spec[1], dim=spec[0])
            model.set_tensor(name, tensor, device)
        model.rope = RotaryEmbedding(model.config, device=device)
        model.eval()
        return model

    @classmethod
    def from_tensors(
        cls, config: ModelConfig, tensors, shard: Shard, device="cpu", dtype=torch.float32
    ) -> "ShardedTransformer":
        """Build from full canonical ``(name, tensor)`` pairs, keeping this rank's slices."""
        model = cls(config, shard, device="meta", dtype=dtype)
        for name, tensor in tensors:
            spec = shard.slices(config, name)
            if spec is not None:
                dim, ranges = spec
                tensor = torch.cat([tensor.narrow(dim, a, b - a) for a, b in ranges], dim=dim)
            model.set_tensor(name, tensor.clone(), device)
        model.rope = RotaryEmbedding(model.config, device=device)
        model.eval()
        return model


def sharded_bytes(model: Transformer, config: ModelConfig, shard: Shard) -> dict[str, int]:
    """Bytes of ``model``'s weights that ``shard`` splits over ranks (``sharded``) and that every rank holds
    whole (``replicated``). Parameter names are the canonical tensor names; RoPE's table is left out."""
    out = {"sharded": 0, "replicated": 0}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if not name.endswith("inv_freq"):
            kind = "replicated" if shard.slices(config, name) is None else "sharded"
            out[kind] += t.numel() * t.element_size()
    return out
