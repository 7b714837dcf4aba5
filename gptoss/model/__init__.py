"""The gpt-oss model in plain PyTorch: config, layers, MXFP4 expert weights, checkpoint formats.

The names below are imported on first use, so that ``gptoss.model.config`` (pure Python) can be read
without importing torch (the command line lists presets in ``--help``)."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "KVCache": "gptoss.model.cache",
    "StepBatch": "gptoss.model.cache",
    "ModelConfig": "gptoss.model.config",
    "PRESETS": "gptoss.model.config",
    "Transformer": "gptoss.model.transformer",
}

__all__ = ["KVCache", "ModelConfig", "PRESETS", "StepBatch", "Transformer"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gptoss.model' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
