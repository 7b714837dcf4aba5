"""Requests -> scheduler -> model runner -> sampler -> tokens."""

from gptoss.engine.llm import LLM, LLMEngine, RequestOutput, TokenEvent
from gptoss.engine.sampling import SamplingParams, TokenLogprobs

__all__ = ["LLM", "LLMEngine", "RequestOutput", "SamplingParams", "TokenEvent", "TokenLogprobs"]
