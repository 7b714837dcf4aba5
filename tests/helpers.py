"""Small builders shared by tests: synthetic models and checkpoints."""

from __future__ import annotations

import torch

from gptoss.model import ModelConfig, Transformer
from gptoss.model.synthetic import random_tensors, write_checkpoint


def tiny_model(preset: str = "tiny", seed: int = 0, **overrides) -> Transformer:
    config = ModelConfig.preset(preset)
    if overrides:
        config = config.replace(**overrides)
    return Transformer.from_tensors(config, random_tensors(config, seed), dtype=torch.float32)


def checkpoint(tmp_path, preset: str = "tiny", layout: str = "hf", seed: int = 0, **overrides):
    config = ModelConfig.preset(preset)
    if overrides:
        config = config.replace(**overrides)
    return write_checkpoint(tmp_path, config, layout=layout, seed=seed)
