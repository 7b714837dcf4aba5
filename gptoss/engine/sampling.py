"""Sampling parameters and the sampler: greedy, temperature, top-k, top-p, per-request seeds, logprobs,
logit bias."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from gptoss.errors import GptossError

SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # OpenAI's range for ``seed``: a signed 64-bit integer
LOGIT_BIAS_MAX_ENTRIES, LOGIT_BIAS_LIMIT = 300, 100.0  # OpenAI's limits for ``logit_bias``


def offset_seed(seed: int | None, k: int) -> int | None:
    """The seed of the ``k``-th choice (or turn) of a request seeded with ``seed``, wrapped to stay in range."""
    if seed is None:
        return None
    return (seed + k - SEED_MIN) % 2**64 + SEED_MIN


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
    # Log-probabilities of the prompt's own tokens (each given the tokens before it; the first has none):
    # None: none; 0: each token's; k: also the top k alternatives at each position.
    prompt_logprobs: int | None = None
    ignore_stop: bool = False
    logits_processors: list[Callable[[list[int], torch.Tensor], torch.Tensor]] = field(default_factory=list)
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit, before the processors
    lora: str | None = None  # the name of a loaded LoRA adapter to run this request with; None: the base model

    def __post_init__(self) -> None:
        checks = [
            (self.temperature >= 0, "temperature", "a number >= 0", self.temperature),
            (0 < self.top_p <= 1, "top_p", "a number in (0, 1]", self.top_p),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k", "an integer >= 0", self.top_k),
            (
                isinstance(self.max_tokens, int) and self.max_tokens >= 1,
                "max_tokens",
                "an integer >= 1",
                self.max_tokens,
            ),
            (
                self.logprobs is None or (isinstance(self.logprobs, int) and 0 <= self.logprobs <= 20),
                "logprobs",
                "None or an integer in [0, 20]",
                self.logprobs,
            ),
            (
                self.prompt_logprobs is None
                or (isinstance(self.prompt_logprobs, int) and 0 <= self.prompt_logprobs <= 20),
                "prompt_logprobs",
                "None or an integer in [0, 20]",
                self.prompt_logprobs,
            ),
            (
                self.seed is None or (isinstance(self.seed, int) and SEED_MIN <= self.seed <= SEED_MAX),
                "seed",
                f"None or an integer in [{SEED_MIN}, {SEED_MAX}] (signed 64-bit)",
                self.seed,
            ),
        ]
        for ok, name, want, found in checks:
            if not ok:
                raise GptossError(f"sampling parameter {name!r}: expected {want}, found {found!r}")
        if len(self.logit_bias) > LOGIT_BIAS_MAX_ENTRIES:
            raise GptossError(
                f"sampling parameter 'logit_bias': at most {LOGIT_BIAS_MAX_ENTRIES} entries, "
                f"found {len(self.logit_bias)}"
            )
        for token, bias in self.logit_bias.items():
            if not isinstance(token, int) or isinstance(token, bool) or token < 0:
                raise GptossError(
                    f"sampling parameter 'logit_bias': keys are token ids (integers >= 0), found {token!r}"
                )
            if not isinstance(bias, (int, float)) or not -LOGIT_BIAS_LIMIT <= bias <= LOGIT_BIAS_LIMIT:
                raise GptossError(
                    f"sampling parameter 'logit_bias': the bias of token {token} should be in "
                    f"[-100, 100], found {bias!r}"
                )

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
    """Choose one token per row of ``logits [B, V]`` (float32), on the logits' device.

    Logits processors run per row; temperature, top-k, top-p and the draw run on the whole batch. Each
    row draws from its own generator (on the logits' device), so a seeded request samples the same
    tokens whatever else shares its batch. Log-probabilities are those of the model's own distribution
    (before processors, temperature, top-k and top-p). ``outputs[i]``: row ``i``'s tokens so far.
    """
    rows = logits.shape[0]
    need_lp = any(p.logprobs is not None for p in params)
    log_softmax = torch.log_softmax(logits, dim=-1) if need_lp else None
    x = logits
    if any(p.logits_processors or p.logit_bias for p in params):
        x = logits.clone()
        for row, p in enumerate(params):
            if p.logit_bias:  # before the processors: a grammar's -inf stays -inf whatever the bias
                ids = torch.tensor(list(p.logit_bias), device=x.device)
                x[row, ids] += torch.tensor(list(p.logit_bias.values()), dtype=x.dtype, device=x.device)
            for processor in p.logits_processors:
                x[row] = processor(outputs[row] if outputs is not None else [], x[row])
    chosen = torch.argmax(x, dim=-1)
    drawn = [r for r in range(rows) if not params[r].greedy]
    if drawn:
        idx = torch.tensor(drawn, device=x.device)
        sub = x[idx] / torch.tensor([params[r].temperature for r in drawn], device=x.device).unsqueeze(1)
        ks = [params[r].top_k for r in drawn]
        if any(ks):
            k = torch.tensor([k or sub.shape[1] for k in ks], device=x.device).clamp(max=sub.shape[1])
            kth = torch.sort(sub, dim=-1, descending=True).values.gather(1, (k - 1).unsqueeze(1))
            sub = sub.masked_fill(sub < kth, float("-inf"))
        probs = torch.softmax(sub, dim=-1)
        ps = torch.tensor([params[r].top_p for r in drawn], device=x.device).unsqueeze(1)
        if bool((ps < 1.0).any()):
            sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
            drop = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > ps  # keep the smallest prefix reaching top_p
            probs = torch.zeros_like(probs).scatter_(1, order, sorted_probs.masked_fill(drop, 0.0))
        # Exponential race: argmax(p / E) with E = -log(U) ~ Exp(1) draws from p (uniforms are ~5x cheaper
        # to draw than exponentials on the CPU).
        uniform = torch.stack([torch.rand(probs.shape[1], device=x.device, generator=generators[r]) for r in drawn])
        noise = -torch.log(uniform)
        chosen[idx] = torch.argmax(probs / noise, dim=-1)
    tokens = chosen.tolist()
    logprobs: list[TokenLogprobs | None] = []
    for row, p in enumerate(params):
        if p.logprobs is None or log_softmax is None:
            logprobs.append(None)
            continue
        lp = log_softmax[row]
        top = []
        if p.logprobs:
            values, ids = torch.topk(lp, p.logprobs)
            top = [(int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist())]
        logprobs.append(TokenLogprobs(tokens[row], float(lp[tokens[row]]), top))
    return tokens, logprobs
