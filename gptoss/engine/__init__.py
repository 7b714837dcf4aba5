"""Requests -> scheduler -> model runner -> sampler -> tokens."""

from gptoss.engine.llm import LLM, LLMEngine, RequestOutput, TokenEvent, check_device, resolve_dtype
from gptoss.engine.sampling import SamplingParams, TokenLogprobs

__all__ = [
    "LLM",
    "LLMEngine",
    "RequestOutput",
    "SamplingParams",
    "TokenEvent",
    "TokenLogprobs",
    "check_device",
    "resolve_dtype",
]
