"""The gpt-oss Transformer: embedding, alternating banded/dense attention blocks each followed by an MoE
block, final RMSNorm, untied unembedding. Module and parameter names mirror the original checkpoint."""

from __future__ import annotations

import os

import torch

from gptoss import kernels
from gptoss.model import backend
from gptoss.model.attention import AttentionBlock
from gptoss.model.cache import StepBatch
from gptoss.model.config import ModelConfig
from gptoss.model.moe import MLPBlock
from gptoss.model.norm import RMSNorm
from gptoss.model.paged_cache import PagedKVCache, PagedMeta
from gptoss.model.rope import RotaryEmbedding

# Tensors kept in float32 whatever the model dtype (as the reference implementation does).
FLOAT32_SUFFIXES = ("norm.scale", "attn.sinks")


class TransformerBlock(torch.nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, device=None, dtype=torch.float32, experts: str = "mxfp4"):
        super().__init__()
        self.attn = AttentionBlock(config, layer_idx, device, dtype)
        self.mlp = MLPBlock(config, device, dtype, experts)

    def forward(self, x, meta: PagedMeta, rope, cache: PagedKVCache, ops: backend.Reference):
        return self.mlp(self.attn(x, meta, rope, cache, ops), ops)


class Transformer(torch.nn.Module):
    def __init__(self, config: ModelConfig, device=None, dtype: torch.dtype = torch.float32, experts: str = "mxfp4"):
        super().__init__()
        self.config = config
        self.dtype = dtype
        self.experts = experts  # expert weights: "mxfp4" (packed) or "dense" (floats)
        self.synthetic = False  # loaded from a synthetic (random-weight) checkpoint
        self.embedding = torch.nn.Embedding(config.vocab_size, config.hidden_size, device=device, dtype=dtype)
        self.block = torch.nn.ModuleList(
            TransformerBlock(config, n, device, dtype, experts) for n in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, device=device)
        self.unembedding = torch.nn.Linear(
            config.hidden_size, config.vocab_size, bias=False, device=device, dtype=dtype
        )
        self.rope = RotaryEmbedding(config, device=None if device == "meta" else device)
        self._backends: dict[tuple[str, str], backend.Reference] = {}

    @property
    def device(self) -> torch.device:
        return self.unembedding.weight.device

    @property
    def ops(self) -> backend.Reference:
        """The backend this model runs (:mod:`gptoss.model.backend`), chosen once for its device and the
        kernel mode."""
        key = (kernels.mode(), str(self.device))
        if key not in self._backends:
            self._backends[key] = backend.select(self.device)
        return self._backends[key]

    # ------------------------------------------------------------------ forward
    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Causal forward over one sequence: ``tokens [T]`` (long) -> logits ``[T, vocab]`` (float32)."""
        if tokens.dim() != 1:
            raise ValueError(f"expected a 1-D tensor of token ids, got shape {tuple(tokens.shape)}")
        tokens = tokens.to(self.device)
        n = tokens.numel()
        cache = PagedKVCache(
            self.config,
            1,
            max(n, 1),
            block_size=16,
            max_step_tokens=max(n, 1),
            device=self.device,
            dtype=self.dtype,
            prefix_caching=False,
        )
        return self.step(tokens, StepBatch.single(n, device=self.device), cache)

    @torch.inference_mode()
    def step(
        self,
        tokens: torch.Tensor,
        batch: StepBatch | PagedMeta,
        cache: PagedKVCache,
        logits_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the new tokens of several sequences (flat ``tokens [N]``, laid out by ``batch``), reading
        and extending ``cache``. Returns float32 logits for all tokens, or only for ``logits_index``.
        Blocks are allocated for the step (unless ``batch`` is already the :class:`PagedMeta` of
        :meth:`PagedKVCache.prepare`) and the band's old blocks given back after."""
        if tokens.numel() and int(tokens.max()) >= self.config.vocab_size:
            raise ValueError(f"token id {int(tokens.max())} is outside the vocabulary ({self.config.vocab_size})")
        meta = (
            batch
            if isinstance(batch, PagedMeta)
            else cache.prepare(batch.slots.tolist(), batch.starts.tolist(), batch.lens.tolist(), tokens.tolist())
        )
        logits = self.step_paged(tokens, meta, cache, logits_index)
        cache.finish(meta)
        return logits

    @torch.inference_mode()
    def step_paged(
        self, tokens: torch.Tensor, meta: PagedMeta, cache: PagedKVCache, logits_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One step over a paged cache whose blocks :meth:`PagedKVCache.prepare` allocated. No host
        synchronisation on the Triton path, so a decode step can be captured in a CUDA graph."""
        ops = self.ops
        x = self.embedding(tokens)
        rope = self.rope.cos_sin(meta.positions)
        for block in self.block:
            x = block(x, meta, rope, cache, ops)
        if logits_index is not None:
            x = x[logits_index]
        return ops.logits(self.norm, self.unembedding, x)

    # ----------------------------------------------------------------- building
    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        layout: str = "auto",
        progress: bool = False,
        quantize: str | None = None,
    ) -> "Transformer":
        """Load a checkpoint folder (either layout) or a hub id such as ``openai/gpt-oss-20b``.
        Expert weights stay as stored: packed in MXFP4 (on the CPU memory-mapped from the file), or dense
        floats for a fine-tuned checkpoint that transformers saved; ``quantize="mxfp4"`` packs dense
        experts on load, expert by expert, rounding to nearest even as the released weights do."""
        from gptoss.errors import CheckpointError
        from gptoss.model.checkpoint import CheckpointReader, locate
        from gptoss.model.hub import resolve_model_path
        from gptoss.model.synthetic import announce_synthetic, is_synthetic_checkpoint

        folder = resolve_model_path(str(path))
        location = locate(folder, layout)
        synthetic = is_synthetic_checkpoint(folder)
        if synthetic:
            announce_synthetic(folder)
        if quantize not in (None, "none", "mxfp4"):
            raise CheckpointError(f"unknown quantization {quantize!r} (choose mxfp4 or none)")
        reader = CheckpointReader(location)
        if torch.device(device).type == "cpu":  # weights stay memory-mapped: page them in while the user types
            from gptoss.model.checkpoint import read_ahead

            read_ahead(sorted(set(location.tensor_files.values())))
        pack = quantize == "mxfp4" and reader.experts == "dense"
        model = cls(reader.config, device="meta", dtype=dtype, experts="mxfp4" if pack else reader.experts)
        names = _names(reader)
        iterator = names
        if progress:
            from tqdm import tqdm

            iterator = tqdm(names, desc="loading weights", unit="tensor", disable=None)
        for name in iterator:
            if pack and name.endswith("_weight.weight"):
                from gptoss.model.mxfp4 import quantize_experts

                blocks, scales = quantize_experts(reader.get(name))
                base = name.removesuffix(".weight")
                model.set_tensor(base + ".blocks", blocks, device)
                model.set_tensor(base + ".scales", scales, device)
                continue
            model.set_tensor(name, reader.get(name), device)
        model.rope = RotaryEmbedding(reader.config, device=device)
        model.synthetic = synthetic
        model.eval()
        return model

    @classmethod
    def from_tensors(cls, config: ModelConfig, tensors, device="cpu", dtype=torch.float32) -> "Transformer":
        """Build from ``(canonical name, tensor)`` pairs (e.g. :func:`gptoss.model.synthetic.random_tensors`)."""
        model = cls(config, device="meta", dtype=dtype)
        for name, tensor in tensors:
            model.set_tensor(name, tensor, device)
        model.rope = RotaryEmbedding(config, device=device)
        model.eval()
        return model

    def set_tensor(self, name: str, tensor: torch.Tensor, device) -> None:
        """Place one canonical tensor, converting floats to the model dtype (norms and sinks to float32)."""
        module_name, _, attr = name.rpartition(".")
        module = self.get_submodule(module_name)
        if tensor.dtype != torch.uint8:
            target = torch.float32 if name.endswith(FLOAT32_SUFFIXES) else self.dtype
            tensor = tensor.to(device=device, dtype=target)
        else:
            tensor = tensor.to(device=device)
        if attr in module._buffers:
            module._buffers[attr] = tensor
        else:
            module._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=False)

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held by weights: packed expert weights and everything else."""
        packed = dense = 0
        for name, t in list(self.named_parameters()) + list(self.named_buffers()):
            if name.endswith("inv_freq"):
                continue
            n = t.numel() * t.element_size()
            if t.dtype == torch.uint8:
                packed += n
            else:
                dense += n
        return {"mxfp4_experts": packed, "dense": dense, "total": packed + dense}


def _names(reader) -> list[str]:
    from gptoss.model.checkpoint import canonical_shapes

    return list(canonical_shapes(reader.config, reader.experts))
