"""LoRA adapters in PEFT's format (``adapter_config.json`` + ``adapter_model.safetensors``), read onto our
canonical modules.

What PEFT writes for gpt-oss (checked against peft 0.21's ``lora.Linear`` and ``lora.ParamWrapper``):

* attention, ``target_modules`` ``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj``:
  ``base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight [r, in]`` and ``lora_B.weight [out, r]``;
  the update is ``scaling * B @ A``. Our ``qkv`` is q, k and v fused by rows, so their A's are stacked and
  their B's placed block-diagonally on q's, k's and v's rows.
* experts, ``target_parameters`` ``mlp.experts.gate_up_proj`` / ``down_proj`` (3-D ``[E, in, out]``, which
  transformers marks ``is_transposed``): ONE pair per parameter holding every expert,
  ``lora_A.weight [r*E, in]`` (expert ``e``'s A is rows ``e*r .. e*r+r``) and ``lora_B.weight [out, r*E]``
  (expert ``e``'s B is columns ``e, E+e, 2E+e, ...``: PEFT reshapes it ``[out, r, E]``). The update of
  expert ``e`` is ``scaling * A_e^T B_e^T`` on the ``[in, out]`` matrix. Both parameters live on one module,
  so PEFT nests two wrappers: the one registered first (``gate_up_proj``) is inside, its tensors under
  ``mlp.experts.base_layer.lora_A`` when ``down_proj`` is targeted too, else under ``mlp.experts.lora_A``.
* ``scaling = lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``), per module through ``rank_pattern`` /
  ``alpha_pattern``. gptoss folds it into B.

Everything is checked before anything is returned: an adapter that does not fit the base is refused in
one line naming the tensor, and nothing of it is loaded.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gptoss.errors import GptossError
from gptoss.model.config import ModelConfig

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
EXPERT_TARGETS = ("gate_up_proj", "down_proj")  # in the order transformers registers them (PEFT's nesting order)
_UNSUPPORTED = {
    "use_dora": "DoRA",
    "lora_bias": "LoRA biases (lora_bias)",
    "fan_in_fan_out": "fan_in_fan_out",
    "modules_to_save": "modules_to_save (whole modules trained beside the adapter)",
    "trainable_token_indices": "trainable_token_indices",
    "layer_replication": "layer_replication",
    "use_qalora": "QA-LoRA",
    "use_bdlora": "BD-LoRA",
}


class AdapterError(GptossError):
    """A LoRA adapter that cannot be applied to this base model."""


@dataclass
class LayerDelta:
    """One layer's low-rank updates in canonical terms, scaling folded into B (``None``: not adapted).

    ``qkv_a [R, hidden]``, ``qkv_b [qkv_dim, R]``; ``out_a [r, heads*head_dim]``, ``out_b [hidden, r]``;
    ``mlp1_a [E, r, hidden]``, ``mlp1_b [E, 2*inter, r]``; ``mlp2_a [E, r, inter]``, ``mlp2_b [E, hidden, r]``
    (rows of mlp1 interleaved gate/linear as the experts' weights)."""

    qkv_a: torch.Tensor | None = None
    qkv_b: torch.Tensor | None = None
    out_a: torch.Tensor | None = None
    out_b: torch.Tensor | None = None
    mlp1_a: torch.Tensor | None = None
    mlp1_b: torch.Tensor | None = None
    mlp2_a: torch.Tensor | None = None
    mlp2_b: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def to(self, device, dtype) -> "LayerDelta":
        return LayerDelta(**{k: v.to(device=device, dtype=dtype) for k, v in self.tensors().items()})

    @property
    def has_experts(self) -> bool:
        return self.mlp1_a is not None or self.mlp2_a is not None


@dataclass
class LoraAdapter:
    name: str
    path: str
    rank: int
    layers: list[LayerDelta] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)

    @property
    def has_experts(self) -> bool:
        return any(layer.has_experts for layer in self.layers)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers for t in layer.tensors().values())


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: the first key that matches the module name's tail."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise AdapterError(f"{folder}: no {CONFIG_FILE} (expected a PEFT LoRA adapter folder)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{path}: expected a JSON object")
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterError(f"{path}: peft_type {config.get('peft_type')!r}: only LORA adapters are supported")
    for key, what in _UNSUPPORTED.items():
        if config.get(key):
            raise AdapterError(f"{path}: {key}: {what} is not supported by gptoss")
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise AdapterError(f"{path}: 'r': expected a positive integer rank, found {r!r}")
    alpha = config.get("lora_alpha", r)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise AdapterError(f"{path}: 'lora_alpha': expected a number, found {alpha!r}")
    return config


_KEY = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)"
    r"|mlp\.experts((?:\.base_layer)*))\.lora_(A|B)\.weight$"
)


def load_adapter(path: str | os.PathLike, config: ModelConfig, name: str | None = None) -> LoraAdapter:
    """Read a PEFT LoRA adapter for the base model of ``config`` (float32, on the CPU)."""
    from safetensors import safe_open

    folder = Path(path)
    if not folder.is_dir():
        raise AdapterError(f"{folder}: not a folder (expected a PEFT adapter: {CONFIG_FILE} + {WEIGHTS_FILE})")
    cfg = read_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise AdapterError(
            f"{folder}: no {WEIGHTS_FILE}"
            + (
                " (adapter_model.bin is not read: convert it to safetensors)"
                if (folder / "adapter_model.bin").exists()
                else ""
            )
        )
    try:
        with safe_open(str(weights), framework="pt") as f:
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise AdapterError(f"{weights}: unreadable safetensors file ({str(exc).strip().splitlines()[0]})") from None

    # Which expert parameters are targeted decides PEFT's nesting of their tensors.
    expert_targets = [
        t for t in EXPERT_TARGETS if any(str(p).split(".")[-1] == t for p in (cfg.get("target_parameters") or []))
    ]
    unknown = [p for p in (cfg.get("target_parameters") or []) if str(p).split(".")[-1] not in EXPERT_TARGETS]
    if unknown:
        raise AdapterError(
            f"{folder / CONFIG_FILE}: target_parameters {unknown[0]!r}: gptoss adapts only "
            "mlp.experts.gate_up_proj and mlp.experts.down_proj"
        )
    depth_of = {t: len(expert_targets) - 1 - i for i, t in enumerate(expert_targets)}

    found: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in raw.items():
        m = _KEY.match(key)
        if not m:
            raise AdapterError(
                f"{weights}: tensor {key}: gptoss applies LoRA to self_attn.q_proj/k_proj/v_proj/o_proj "
                "and mlp.experts.gate_up_proj/down_proj only"
            )
        layer, attn, nesting, ab = int(m.group(1)), m.group(3), m.group(4), m.group(5)
        if layer >= config.num_hidden_layers:
            raise AdapterError(
                f"{weights}: tensor {key}: layer {layer}, but the base model has {config.num_hidden_layers} layers"
            )
        if attn:
            target = attn
        else:
            depth = nesting.count(".base_layer")
            target = next((t for t, d in depth_of.items() if d == depth), None)
            if target is None:
                raise AdapterError(
                    f"{weights}: tensor {key}: no expert parameter of target_parameters "
                    f"{cfg.get('target_parameters')!r} is stored there"
                )
        if tensor.dim() != 2 or not tensor.dtype.is_floating_point:
            raise AdapterError(
                f"{weights}: tensor {key}: expected a 2-D float matrix, found {tensor.dtype} {list(tensor.shape)}"
            )
        found.setdefault((layer, target), {})[ab] = tensor
    if not found:
        raise AdapterError(f"{weights}: holds no LoRA tensors")

    h, i, e = config.hidden_size, config.intermediate_size, config.num_experts
    hq, hk, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    dims = {
        "q_proj": (h, hq * d),
        "k_proj": (h, hk * d),
        "v_proj": (h, hk * d),
        "o_proj": (hq * d, h),
        "gate_up_proj": (h, 2 * i),
        "down_proj": (i, h),
    }  # (in, out)
    use_rslora = bool(cfg.get("use_rslora"))
    pieces: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    for (layer, target), ab in sorted(found.items()):
        module = (
            f"model.layers.{layer}.self_attn.{target}"
            if target in ATTENTION_TARGETS
            else f"model.layers.{layer}.mlp.experts.{target}"
        )
        where = f"{weights}: {module}"
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{where}: lora_{'B' if 'A' in ab else 'A'}.weight is missing")
        a, b = ab["A"].float(), ab["B"].float()
        r = _pattern_value(cfg.get("rank_pattern"), module, cfg["r"])
        alpha = _pattern_value(cfg.get("alpha_pattern"), module, cfg.get("lora_alpha", cfg["r"]))
        experts = e if target in EXPERT_TARGETS else 1
        fan_in, fan_out = dims[target]
        if a.shape[0] != b.shape[1]:
            raise AdapterError(
                f"{where}: lora_A has {a.shape[0]} rows but lora_B {b.shape[1]} columns (they must agree)"
            )
        if a.shape[0] != r * experts:
            need = f"rank {r} x {e} experts = {r * experts}" if experts > 1 else f"rank {r}"
            raise AdapterError(
                f"{where}: lora_A.weight {list(a.shape)} has {a.shape[0]} rows; the adapter's {need} does not fit it"
            )
        if a.shape[1] != fan_in or b.shape[0] != fan_out:
            raise AdapterError(
                f"{where}: expected lora_A [{r * experts}, {fan_in}] and lora_B [{fan_out}, {r * experts}] "
                f"for this base model, found {list(a.shape)} and {list(b.shape)}"
            )
        scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        if experts > 1:
            a = a.reshape(e, r, fan_in)  # expert e: rows e*r .. e*r+r
            b = b.reshape(fan_out, r, e).permute(2, 0, 1)  # expert e: columns e, E+e, ... -> [E, out, r]
        pieces[(layer, target)] = (a.contiguous(), (b * scaling).contiguous())

    layers = [_fuse(config, n, pieces) for n in range(config.num_hidden_layers)]
    targets = sorted({t for _, t in pieces})
    return LoraAdapter(name or folder.name, str(folder), int(cfg["r"]), layers, targets)


def _fuse(config: ModelConfig, n: int, pieces) -> LayerDelta:
    """One layer's canonical deltas: q, k, v joined onto the fused qkv rows."""
    hq, hk, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    out = LayerDelta()
    qkv = [(pieces.get((n, t)), rows) for t, rows in (("q_proj", hq * d), ("k_proj", hk * d), ("v_proj", hk * d))]
    if any(p is not None for p, _ in qkv):
        ranks = [p[0].shape[0] if p is not None else 0 for p, _ in qkv]
        a = torch.zeros(sum(ranks), config.hidden_size)
        b = torch.zeros(d * (hq + 2 * hk), sum(ranks))
        row = col = 0
        for (p, rows), r in zip(qkv, ranks):
            if p is not None:
                a[col : col + r] = p[0]
                b[row : row + rows, col : col + r] = p[1]
            row, col = row + rows, col + r
        out.qkv_a, out.qkv_b = a, b
    if (n, "o_proj") in pieces:
        out.out_a, out.out_b = pieces[(n, "o_proj")]
    if (n, "gate_up_proj") in pieces:
        out.mlp1_a, out.mlp1_b = pieces[(n, "gate_up_proj")]
    if (n, "down_proj") in pieces:
        out.mlp2_a, out.mlp2_b = pieces[(n, "down_proj")]
    return out
