"""Sampling parameters and the sampler: greedy, temperature, top-k, top-p, per-request seeds, logprobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from gptoss.errors import GptossError


class LogitsProcessor(Protocol):
    """Called before each sampling step with the tokens generated so far (not the prompt) and the
    float32 logits ``[vocab]`` of the next token; returns the logits to sample from (e.g. with
    disallowed tokens set to -inf: constrained decoding)."""

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor: ...


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no limit
    max_tokens: int = 256
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    logprobs: int | None = None  # None: none; 0: the chosen token's; k: also the top k alternatives
    ignore_stop: bool = False
    logits_processors: list[Callable[[list[int], torch.Tensor], torch.Tensor]] = field(default_factory=list)

    def __post_init__(self) -> None:
        checks = [
            (self.temperature >= 0, "temperature", "a number >= 0", self.temperature),
            (0 < self.top_p <= 1, "top_p", "a number in (0, 1]", self.top_p),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k", "an integer >= 0", self.top_k),
            (isinstance(self.max_tokens, int) and self.max_tokens >= 1, "max_tokens", "an integer >= 1", self.max_tokens),
            (self.logprobs is None or (isinstance(self.logprobs, int) and 0 <= self.logprobs <= 20),
             "logprobs", "None or an integer in [0, 20]", self.logprobs),
        ]
        for ok, name, want, found in checks:
            if not ok:
                raise GptossError(f"sampling parameter {name!r}: expected {want}, found {found!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


@dataclass
class TokenLogprobs:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # the most likely alternatives, best first


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator],
    outputs: list[list[int]] | None = None,
) -> tuple[list[int], list[TokenLogprobs | None]]:
    """Choose one token per row of ``logits [B, V]`` (float32). Log-probabilities are those of the model's
    own distribution (before logits processors, temperature, top-k and top-p). ``outputs[i]``: the tokens
    row ``i`` generated so far, passed to its logits processors."""
    tokens: list[int] = []
    logprobs: list[TokenLogprobs | None] = []
    need_lp = any(p.logprobs is not None for p in params)
    log_softmax = torch.log_softmax(logits, dim=-1) if need_lp else None
    for row, (p, g) in enumerate(zip(params, generators)):
        x = logits[row]
        for processor in p.logits_processors:
            x = processor(outputs[row] if outputs is not None else [], x)
        if p.greedy:
            token = int(torch.argmax(x))
        else:
            x = x / p.temperature
            if p.top_k:
                kth = torch.topk(x, min(p.top_k, x.numel())).values[-1]
                x = x.masked_fill(x < kth, float("-inf"))
            probs = torch.softmax(x, dim=-1)
            if p.top_p < 1.0:
                sorted_probs, order = torch.sort(probs, descending=True)
                cumulative = torch.cumsum(sorted_probs, dim=-1)
                drop = cumulative - sorted_probs > p.top_p  # keep the smallest prefix reaching top_p
                sorted_probs = sorted_probs.masked_fill(drop, 0.0)
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
            # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p; one draw per row from its own generator.
            noise = torch.empty_like(probs).exponential_(1.0, generator=g)
            token = int(torch.argmax(probs / noise))
        tokens.append(token)
        if p.logprobs is not None and log_softmax is not None:
            lp = log_softmax[row]
            top = []
            if p.logprobs:
                values, ids = torch.topk(lp, p.logprobs)
                top = [(int(i), float(v)) for i, v in zip(ids, values)]
            logprobs.append(TokenLogprobs(token, float(lp[token]), top))
        else:
            logprobs.append(None)
    return tokens, logprobs
