"""The gpt-oss model in plain PyTorch: config, layers, MXFP4 expert weights, checkpoint formats."""

from gptoss.model.cache import KVCache, StepBatch
from gptoss.model.config import PRESETS, ModelConfig
from gptoss.model.transformer import Transformer

__all__ = ["KVCache", "ModelConfig", "PRESETS", "StepBatch", "Transformer"]
