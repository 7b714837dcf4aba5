"""Several LoRA adapters served at once over one base model, each token with its own (S-LoRA / Punica style).

The base weights are never touched: each adapted projection adds ``B_a (A_a x)`` for the tokens of
adapter ``a``, grouped by adapter, to the base projection's output. The model runner sets, before each
forward, which adapter each flat token uses (:meth:`LoraSet.active`); with none set (or every token on
the base) the model runs exactly as without adapters, fast paths included.

Where the deltas go: the fused ``qkv`` and ``out`` projections of attention (added after the base
product, so the Triton and CPU kernels still run it), and the experts (:func:`gptoss.model.moe.experts_reference`
adds each adapter's per-expert delta to ``mlp1`` and ``mlp2`` of the tokens routed there; a step whose
adapters touch the experts runs that reference path, since the fused expert kernels have no LoRA input).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from gptoss.errors import GptossError
from gptoss.model.peft_adapter import AdapterError, LoraAdapter, load_adapter


@dataclass
class _Group:
    slot: int  # 1-based index into LoraSet.adapters (0 is the base)
    rows: torch.Tensor | None  # flat token rows of this adapter; None = every token of the step


class StepAdapters:
    """The adapters of one step: per flat token its adapter slot (0 = base), and the rows of each adapter."""

    def __init__(self, token_slot: torch.Tensor, groups: list[_Group]):
        self.token_slot = token_slot
        self.groups = groups


class LoraSet:
    """The adapters loaded on a model, by name, and the hooks its attention and MLP blocks call."""

    def __init__(self, model):
        self.model = model
        self.adapters: list[LoraAdapter] = []
        self.step: StepAdapters | None = None
        for n, block in enumerate(model.block):
            block.attn.lora = LayerLora(self, n)
            block.mlp.lora = LayerLora(self, n)

    @classmethod
    def of(cls, model) -> "LoraSet":
        """The model's set, created (and its blocks hooked) on first use."""
        if getattr(model, "lora", None) is None:
            model.lora = cls(model)
        return model.lora

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.adapters]

    def add(self, path: str | os.PathLike, name: str | None = None) -> LoraAdapter:
        """Load the PEFT adapter at ``path`` under ``name`` (default: its folder's name)."""
        return self.add_all([(name, path)])[0]

    def add_all(self, specs: list[tuple[str | None, str | os.PathLike]]) -> list[LoraAdapter]:
        """Load ``[(name, path)]`` (or already built :class:`LoraAdapter` objects in place of paths). All
        are read and checked before any is kept: one bad adapter leaves the set as it was."""
        names = list(self.names)
        loaded = []
        for name, path in specs:
            adapter = path if isinstance(path, LoraAdapter) else load_adapter(path, self.model.config, name)
            if not adapter.name.strip() or adapter.name != adapter.name.strip():
                raise AdapterError(
                    f"{path}: LoRA adapter name {adapter.name!r}: expected a name without "
                    "surrounding spaces (NAME=PATH)"
                )
            if adapter.name in names:
                raise AdapterError(f"{path}: LoRA adapter name {adapter.name!r} is already in use")
            names.append(adapter.name)
            loaded.append(adapter)
        device, dtype = self.model.device, self.model.dtype
        for adapter in loaded:
            adapter.layers = [layer.to(device, dtype) for layer in adapter.layers]
        self.adapters.extend(loaded)
        return loaded

    def slot(self, name: str | None) -> int:
        """0 for the base (``None``), else the adapter's 1-based slot; an unknown name is refused."""
        if name is None:
            return 0
        try:
            return self.names.index(name) + 1
        except ValueError:
            loaded = ", ".join(self.names) or "none"
            raise GptossError(f"unknown LoRA adapter {name!r} (loaded: {loaded})") from None

    @contextlib.contextmanager
    def active(self, per_sequence: list[tuple[int, int]]):
        """Run the model's next forward with ``per_sequence`` = ``[(adapter slot, tokens)]`` in the flat
        token order of the step."""
        if not any(slot for slot, _ in per_sequence):
            yield
            return
        device = self.model.device
        slots = [s for s, n in per_sequence for _ in range(n)]
        token_slot = torch.tensor(slots, dtype=torch.long, device=device)
        groups = []
        for slot in sorted({s for s, _ in per_sequence if s}):
            rows = (
                None
                if all(s == slot for s in slots)
                else torch.tensor([i for i, s in enumerate(slots) if s == slot], dtype=torch.long, device=device)
            )
            groups.append(_Group(slot, rows))
        self.step = StepAdapters(token_slot, groups)
        try:
            yield
        finally:
            self.step = None


class LayerLora:
    """The hooks of one layer: deltas of its adapted projections for the tokens of the current step."""

    def __init__(self, lora_set: LoraSet, layer: int):
        self.set = lora_set
        self.layer = layer

    def _deltas(self):
        step = self.set.step
        if step is None:
            return
        for group in step.groups:
            yield group, self.set.adapters[group.slot - 1].layers[self.layer]

    @property
    def active(self) -> bool:
        return self.set.step is not None

    @property
    def experts_active(self) -> bool:
        return any(d.has_experts for _, d in self._deltas())

    def _add(self, x: torch.Tensor, y: torch.Tensor, a_name: str, b_name: str) -> torch.Tensor:
        for group, delta in self._deltas():
            a, b = getattr(delta, a_name), getattr(delta, b_name)
            if a is None:
                continue
            xs = x if group.rows is None else x[group.rows]
            d = (xs.to(a.dtype) @ a.T) @ b.T
            y = y + d.to(y.dtype) if group.rows is None else y.index_add(0, group.rows, d.to(y.dtype))
        return y

    def qkv(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``y`` (the fused qkv projection of the normed ``x``) plus each adapter's q, k, v deltas."""
        return self._add(x, y, "qkv_a", "qkv_b")

    def out(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``y`` (the output projection of the attention result ``x``) plus each adapter's o_proj delta."""
        return self._add(x, y, "out_a", "out_b")

    def expert(self, which: int, expert: int, x: torch.Tensor, tokens: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``y`` (expert ``expert``'s ``mlp1`` or ``mlp2`` output for the flat token rows ``tokens``, input
        ``x``) plus each adapter's delta for that expert on its own tokens."""
        a_name, b_name = ("mlp1_a", "mlp1_b") if which == 1 else ("mlp2_a", "mlp2_b")
        step = self.set.step
        slots = step.token_slot[tokens]
        for group, delta in self._deltas():
            a, b = getattr(delta, a_name), getattr(delta, b_name)
            if a is None:
                continue
            if group.rows is None:
                d = (x.to(a.dtype) @ a[expert].T) @ b[expert].T
                y = y + d.to(y.dtype)
                continue
            sel = torch.nonzero(slots == group.slot).squeeze(1)
            if sel.numel():
                d = (x[sel].to(a.dtype) @ a[expert].T) @ b[expert].T
                y = y.index_add(0, sel, d.to(y.dtype))
        return y


def random_adapter(
    config, name: str, rank: int, experts: bool = False, seed: int = 0, scale: float = 0.01
) -> LoraAdapter:
    """A random adapter of ``rank`` on q, k, v, o (and, with ``experts``, both expert parameters) of every
    layer, built in memory: what ``gptoss bench`` times adapters with."""
    from gptoss.model.peft_adapter import LayerDelta

    g = torch.Generator().manual_seed(seed)
    h, i, e = config.hidden_size, config.intermediate_size, config.num_experts
    hq, hk, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim

    def r(*shape):
        return scale * torch.randn(*shape, generator=g)

    layers = []
    for _ in range(config.num_hidden_layers):
        delta = LayerDelta(
            qkv_a=r(3 * rank, h), qkv_b=r(d * (hq + 2 * hk), 3 * rank), out_a=r(rank, hq * d), out_b=r(h, rank)
        )
        if experts:
            delta.mlp1_a, delta.mlp1_b = r(e, rank, h), r(e, 2 * i, rank)
            delta.mlp2_a, delta.mlp2_b = r(e, rank, i), r(e, h, rank)
        layers.append(delta)
    return LoraAdapter(
        name,
        "(random)",
        rank,
        layers,
        ["q_proj", "k_proj", "v_proj", "o_proj"] + (["gate_up_proj", "down_proj"] if experts else []),
    )


def parse_specs(lora) -> list[tuple[str | None, str]]:
    """``LLM(lora=...)``: a path, ``NAME=PATH``, a list of those, or ``{name: path}``."""
    if lora is None:
        return []
    if isinstance(lora, dict):
        return [(str(k), str(v)) for k, v in lora.items()]
    items = [lora] if isinstance(lora, (str, os.PathLike)) else list(lora)
    specs = []
    for item in items:
        text = str(item)
        name, sep, path = text.partition("=")
        if sep and name and not os.path.exists(text):
            specs.append((name, path))
        else:
            specs.append((None, text))
    return specs


def lora_hook(module) -> LayerLora | None:
    """The module's hook when a step with adapters is running, else None (the base path, untouched)."""
    hook = getattr(module, "lora", None)
    return hook if hook is not None and hook.active else None
