"""Model configuration: presets, and the two config files users download.

``config.json`` (Hugging Face layout) and ``original/config.json`` (the reference layout) name the same
numbers differently; both map onto :class:`ModelConfig`. Unknown or inconsistent values are rejected
with a :class:`~gptoss.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptoss.errors import ConfigError

MXFP4_BLOCK = 32


@dataclass(frozen=True)
class ModelConfig:
    num_hidden_layers: int = 24
    num_experts: int = 32
    experts_per_token: int = 4
    vocab_size: int = 201088
    hidden_size: int = 2880
    intermediate_size: int = 2880
    swiglu_limit: float = 7.0
    swiglu_alpha: float = 1.702
    head_dim: int = 64
    num_attention_heads: int = 64
    num_key_value_heads: int = 8
    sliding_window: int = 128
    initial_context_length: int = 4096
    rope_theta: float = 150000.0
    rope_scaling_factor: float = 32.0
    rope_ntk_alpha: float = 1.0
    rope_ntk_beta: float = 32.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 131072
    # Which layers are banded: by default even layers (0, 2, ...) use the sliding window.
    layer_types: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        self._check_ceilings()  # before anything is built over these sizes (layer_types, tensor lists, caches)
        if not self.layer_types:
            object.__setattr__(
                self,
                "layer_types",
                tuple("sliding_attention" if i % 2 == 0 else "full_attention" for i in range(self.num_hidden_layers)),
            )
        else:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        self.validate()

    # ------------------------------------------------------------------ checks
    def _check_ceilings(self) -> None:
        for name, ceiling in CEILINGS.items():
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool) and value > ceiling:
                raise ConfigError(
                    f"config field {name!r}: {value} is over the ceiling of {ceiling} "
                    "(far above any gpt-oss model; a damaged or hostile config?)"
                )

    def validate(self) -> None:
        self._check_ceilings()
        positive = [
            "num_hidden_layers",
            "num_experts",
            "experts_per_token",
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "head_dim",
            "num_attention_heads",
            "num_key_value_heads",
            "initial_context_length",
            "max_position_embeddings",
        ]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config field {name!r}: expected a positive integer, found {value!r}")
        for name in [
            "swiglu_limit",
            "swiglu_alpha",
            "rope_theta",
            "rope_scaling_factor",
            "rope_ntk_alpha",
            "rope_ntk_beta",
            "rms_norm_eps",
        ]:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or math.isinf(value):
                raise ConfigError(f"config field {name!r}: expected a positive number, found {value!r}")
        if not isinstance(self.sliding_window, int) or self.sliding_window < 0:
            raise ConfigError(f"config field 'sliding_window': expected an integer >= 0, found {self.sliding_window!r}")
        if self.experts_per_token > self.num_experts:
            raise ConfigError(
                f"config field 'experts_per_token': {self.experts_per_token} exceeds num_experts {self.num_experts}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"config field 'num_key_value_heads': {self.num_key_value_heads} does not divide "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"config field 'head_dim': expected an even number for RoPE, found {self.head_dim}")
        for name in ["hidden_size", "intermediate_size"]:
            if getattr(self, name) % MXFP4_BLOCK:
                raise ConfigError(
                    f"config field {name!r}: expected a multiple of {MXFP4_BLOCK} (the MXFP4 block), "
                    f"found {getattr(self, name)}"
                )
        if len(self.layer_types) != self.num_hidden_layers:
            raise ConfigError(
                f"config field 'layer_types': expected {self.num_hidden_layers} entries (num_hidden_layers), "
                f"found {len(self.layer_types)}"
            )
        for i, kind in enumerate(self.layer_types):
            if kind not in ("sliding_attention", "full_attention"):
                raise ConfigError(
                    f"config field 'layer_types[{i}]': expected 'sliding_attention' or 'full_attention', found {kind!r}"
                )
        if self.rope_scaling_factor > 1.0:
            d_half = self.head_dim / 2
            low = (
                d_half
                * math.log(self.initial_context_length / (self.rope_ntk_beta * 2 * math.pi))
                / math.log(self.rope_theta)
            )
            high = (
                d_half
                * math.log(self.initial_context_length / (self.rope_ntk_alpha * 2 * math.pi))
                / math.log(self.rope_theta)
            )
            if not (0 < low < high < d_half - 1):
                raise ConfigError(
                    "config fields 'rope_ntk_alpha'/'rope_ntk_beta': the YaRN ramp "
                    f"[{low:.2f}, {high:.2f}] must lie inside (0, head_dim/2 - 1 = {d_half - 1:.0f})"
                )

    # ----------------------------------------------------------- derived sizes
    def window(self, layer: int) -> int:
        """The attention window of a layer; 0 means dense causal attention."""
        return self.sliding_window if self.layer_types[layer] == "sliding_attention" else 0

    @property
    def q_mult(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def param_counts(self) -> dict[str, int]:
        h, i, e, v = self.hidden_size, self.intermediate_size, self.num_experts, self.vocab_size
        qkv = h * self.head_dim * (self.num_attention_heads + 2 * self.num_key_value_heads)
        attn = qkv + self.head_dim * (self.num_attention_heads + 2 * self.num_key_value_heads)  # + bias
        attn += self.num_attention_heads * self.head_dim * h + h + self.num_attention_heads + h  # out, sinks, norm
        experts = e * (2 * i * h + h * i)
        mlp_dense = h * e + e + e * (2 * i + h) + h  # router, expert biases, norm
        per_layer = attn + mlp_dense
        return {
            "expert_weights": experts * self.num_hidden_layers,
            "dense": per_layer * self.num_hidden_layers + 2 * v * h + h,
        }

    def weight_bytes(self) -> int:
        """Bytes of weights as stored: experts in MXFP4 (4.25 bits), everything else bf16."""
        counts = self.param_counts()
        return counts["expert_weights"] * 17 // 32 + counts["dense"] * 2

    # ------------------------------------------------------------- file forms
    def to_original(self) -> dict[str, Any]:
        """The ``original/config.json`` form (the reference implementation's field names)."""
        out = {
            "num_hidden_layers": self.num_hidden_layers,
            "num_experts": self.num_experts,
            "experts_per_token": self.experts_per_token,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "swiglu_limit": self.swiglu_limit,
            "head_dim": self.head_dim,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "sliding_window": self.sliding_window,
            "initial_context_length": self.initial_context_length,
            "rope_theta": self.rope_theta,
            "rope_scaling_factor": self.rope_scaling_factor,
            "rope_ntk_alpha": self.rope_ntk_alpha,
            "rope_ntk_beta": self.rope_ntk_beta,
        }
        return out

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face ``config.json`` form, as in the official repositories."""
        return {
            "architectures": ["GptOssForCausalLM"],
            "model_type": "gpt_oss",
            "attention_bias": True,
            "attention_dropout": 0.0,
            "eos_token_id": 200002,
            "pad_token_id": 199999,
            "experts_per_token": self.experts_per_token,
            "num_experts_per_tok": self.experts_per_token,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initial_context_length": self.initial_context_length,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "layer_types": list(self.layer_types),
            "max_position_embeddings": self.max_position_embeddings,
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "num_local_experts": self.num_experts,
            "output_router_logits": False,
            "quantization_config": {
                "modules_to_not_convert": [
                    "model.layers.*.self_attn",
                    "model.layers.*.mlp.router",
                    "model.embed_tokens",
                    "lm_head",
                ],
                "quant_method": "mxfp4",
            },
            "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": {
                "beta_fast": self.rope_ntk_beta,
                "beta_slow": self.rope_ntk_alpha,
                "factor": self.rope_scaling_factor,
                "original_max_position_embeddings": self.initial_context_length,
                "rope_type": "yarn",
                "truncate": False,
            },
            "rope_theta": self.rope_theta,
            "sliding_window": self.sliding_window,
            "swiglu_limit": self.swiglu_limit,
            "tie_word_embeddings": False,
            "use_cache": True,
            "vocab_size": self.vocab_size,
        }

    @classmethod
    def from_original(cls, data: dict[str, Any], source: str = "original/config.json") -> "ModelConfig":
        known = set(ORIGINAL_FIELDS)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
        missing = [k for k in ("num_hidden_layers", "num_experts", "hidden_size", "vocab_size") if k not in data]
        if missing:
            raise ConfigError(f"{source}: missing required field {missing[0]!r}")
        kwargs = {k: _number(source, k, v) for k, v in data.items()}
        return _build(source, kwargs)

    @classmethod
    def from_hf(cls, data: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        model_type = data.get("model_type")
        if model_type != "gpt_oss":
            raise ConfigError(f"{source}: field 'model_type': expected 'gpt_oss', found {model_type!r}")
        unknown = sorted(set(data) - HF_FIELDS)
        if unknown:
            raise ConfigError(f"{source}: unknown field {unknown[0]!r} for a gpt_oss config")
        missing = [k for k in ("num_hidden_layers", "num_local_experts", "hidden_size", "vocab_size") if k not in data]
        if missing:
            raise ConfigError(f"{source}: missing required field {missing[0]!r}")
        for flag, want in (("tie_word_embeddings", False), ("attention_bias", True)):
            if flag in data and data[flag] is not want:
                raise ConfigError(f"{source}: field {flag!r}: gpt-oss requires {want}, found {data[flag]!r}")
        if data.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"{source}: field 'hidden_act': expected 'silu', found {data['hidden_act']!r}")
        kwargs: dict[str, Any] = {}
        for hf_name, ours in HF_TO_OURS.items():
            if hf_name in data and data[hf_name] is not None:
                kwargs[ours] = _number(source, hf_name, data[hf_name])
        a, b = data.get("experts_per_token"), data.get("num_experts_per_tok")
        if a is not None and b is not None and a != b:
            raise ConfigError(f"{source}: fields 'experts_per_token' ({a}) and 'num_experts_per_tok' ({b}) disagree")
        rope = data.get("rope_scaling") or data.get("rope_parameters")
        if rope:
            if not isinstance(rope, dict):
                raise ConfigError(f"{source}: field 'rope_scaling': expected an object, found {rope!r}")
            if rope.get("rope_type", rope.get("type")) not in ("yarn", None):
                raise ConfigError(
                    f"{source}: field 'rope_scaling.rope_type': expected 'yarn', found {rope.get('rope_type')!r}"
                )
            if rope.get("truncate", False):
                raise ConfigError(f"{source}: field 'rope_scaling.truncate': gpt-oss uses false, found true")
            for key, ours in (
                ("factor", "rope_scaling_factor"),
                ("beta_fast", "rope_ntk_beta"),
                ("beta_slow", "rope_ntk_alpha"),
                ("original_max_position_embeddings", "initial_context_length"),
                ("rope_theta", "rope_theta"),
            ):
                if key in rope:
                    kwargs[ours] = _number(source, f"rope_scaling.{key}", rope[key])
        if "layer_types" in data and data["layer_types"] is not None:
            if not isinstance(data["layer_types"], list):
                raise ConfigError(f"{source}: field 'layer_types': expected a list, found {data['layer_types']!r}")
            kwargs["layer_types"] = tuple(data["layer_types"])
        if kwargs.get("sliding_window") is None:
            kwargs["sliding_window"] = 0
        return _build(source, kwargs)

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object, found {type(data).__name__}")
        if "model_type" in data or "num_local_experts" in data:
            return cls.from_hf(data, str(path))
        return cls.from_original(data, str(path))

    @classmethod
    def preset(cls, name: str) -> "ModelConfig":
        try:
            return PRESETS[name]
        except KeyError:
            raise ConfigError(f"unknown preset {name!r} (choose from: {', '.join(PRESETS)})") from None

    def replace(self, **changes: Any) -> "ModelConfig":
        if "num_hidden_layers" in changes and "layer_types" not in changes:
            changes["layer_types"] = ()
        return dataclasses.replace(self, **changes)


ORIGINAL_FIELDS = [
    "num_hidden_layers",
    "num_experts",
    "experts_per_token",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "swiglu_limit",
    "head_dim",
    "num_attention_heads",
    "num_key_value_heads",
    "sliding_window",
    "initial_context_length",
    "rope_theta",
    "rope_scaling_factor",
    "rope_ntk_alpha",
    "rope_ntk_beta",
]

HF_TO_OURS = {
    "num_hidden_layers": "num_hidden_layers",
    "num_local_experts": "num_experts",
    "experts_per_token": "experts_per_token",
    "num_experts_per_tok": "experts_per_token",
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "swiglu_limit": "swiglu_limit",
    "swiglu_alpha": "swiglu_alpha",
    "head_dim": "head_dim",
    "num_attention_heads": "num_attention_heads",
    "num_key_value_heads": "num_key_value_heads",
    "sliding_window": "sliding_window",
    "initial_context_length": "initial_context_length",
    "rope_theta": "rope_theta",
    "rms_norm_eps": "rms_norm_eps",
    "max_position_embeddings": "max_position_embeddings",
}

# Fields a Hugging Face gpt_oss config.json may carry; anything else is rejected as unknown.
HF_FIELDS = set(HF_TO_OURS) | {
    "architectures",
    "model_type",
    "attention_bias",
    "attention_dropout",
    "eos_token_id",
    "pad_token_id",
    "bos_token_id",
    "hidden_act",
    "initializer_range",
    "layer_types",
    "output_router_logits",
    "quantization_config",
    "rope_scaling",
    "rope_parameters",
    "router_aux_loss_coef",
    "tie_word_embeddings",
    "transformers_version",
    "use_cache",
    "torch_dtype",
    "dtype",
    "_name_or_path",
}


def _number(source: str, name: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{source}: field {name!r}: expected a number, found {value!r}")
    if isinstance(value, float) and value.is_integer() and name in INTEGER_FIELDS:
        return int(value)
    return value


INTEGER_FIELDS = {
    "num_hidden_layers",
    "num_experts",
    "num_local_experts",
    "experts_per_token",
    "num_experts_per_tok",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "head_dim",
    "num_attention_heads",
    "num_key_value_heads",
    "sliding_window",
    "initial_context_length",
    "max_position_embeddings",
    "rope_scaling.original_max_position_embeddings",
}


# Every size a config gives is bounded before anything is allocated by it: gpt-oss-120b has 36 layers, 128
# experts, a width of 2880 and 201,088 tokens; these ceilings leave room for any variant, not for 10**7 layers.
CEILINGS = {
    "num_hidden_layers": 1024,
    "num_experts": 4096,
    "experts_per_token": 4096,
    "vocab_size": 2**22,
    "hidden_size": 2**16,
    "intermediate_size": 2**18,
    "head_dim": 2**12,
    "num_attention_heads": 2**12,
    "num_key_value_heads": 2**12,
    "sliding_window": 2**24,
    "initial_context_length": 2**24,
    "max_position_embeddings": 2**24,
}


def _build(source: str, kwargs: dict[str, Any]) -> ModelConfig:
    for k in INTEGER_FIELDS & set(kwargs):
        if isinstance(kwargs[k], float):
            raise ConfigError(f"{source}: field {k!r}: expected an integer, found {kwargs[k]!r}")
    try:
        return ModelConfig(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _miniature(layers: int, width: int, head_dim: int, heads: int, window: int) -> ModelConfig:
    """gpt-oss's layout at small widths: 8 experts, 2 key-value heads, the real vocabulary."""
    return ModelConfig(
        num_hidden_layers=layers,
        num_experts=8,
        hidden_size=width,
        intermediate_size=width,
        head_dim=head_dim,
        num_attention_heads=heads,
        num_key_value_heads=2,
        sliding_window=window,
    )


PRESETS: dict[str, ModelConfig] = {
    "gpt-oss-20b": ModelConfig(num_hidden_layers=24, num_experts=32),
    "gpt-oss-120b": ModelConfig(num_hidden_layers=36, num_experts=128),
    # Small shapes for tests and demos: real vocabulary (so the tokenizer works), tiny everything else.
    "tiny": _miniature(layers=2, width=64, head_dim=16, heads=4, window=16),
    "small": _miniature(layers=4, width=128, head_dim=32, heads=8, window=128),
    # The synthetic demo `gptoss chat` falls back to: gpt-oss's layout in miniature (banded and dense layers,
    # a 128-token window, top-4 of 8 experts, the real vocabulary), ~50 MB, tens of tokens/s on one CPU core.
    "demo": _miniature(layers=4, width=64, head_dim=16, heads=4, window=128),
}
