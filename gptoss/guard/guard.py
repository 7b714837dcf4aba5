"""The guard: every policy checks a piece of content (concurrently), each verdict becomes an action (the
policy's own, block or flag, when violated), and every decision goes to the audit log and the metrics.

A guard that cannot decide (endpoint down, reply without a verdict, generation cut short) fails closed by
default: the content is treated as blocked and the audit log records the error (``on_error="allow"``
fails open instead).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from gptoss.errors import GptossError
from gptoss.guard.audit import AuditLog, AuditRecord
from gptoss.guard.backends import EndpointGuard, GuardBackend, LocalGuard
from gptoss.guard.policy import Policy
from gptoss.guard.verdict import Verdict, VerdictError, parse_verdict
from gptoss.harmony import EFFORT_NAMES

STAGES = ("input", "output", "tool", "reasoning", "moderation")
STREAM_MODES = ("end", "chunks")


@dataclass
class GuardSettings:
    """What ``gptoss serve --guard ...`` asks for."""

    policies: list[Policy]
    base_url: str | None = None  # an OpenAI-compatible guard endpoint
    model: str | None = None  # the model name there
    api_key: str | None = None
    llm: Any = None  # an LLM loaded for --guard-model (None, without base_url: the served model itself)
    effort: str = "low"
    reasoning_max_tokens: int = 256  # the local guard's reasoning budget
    rationale_max_chars: int = 240  # the longest rationale the local guard may write
    check_input: bool = True
    check_output: bool = True
    check_tools: bool = False
    check_reasoning: bool = False
    stream: str = (
        "end"  # end: release the answer after it passed whole; chunks: in checked pieces (see guard/stream.py)
    )
    chunk_chars: int = 400
    on_error: str = "block"  # block (fail closed) or allow (fail open)
    audit_path: str | None = None
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if not self.policies:
            raise GptossError("--guard: at least one policy file is needed")
        if self.stream not in STREAM_MODES:
            raise GptossError(f"--guard-stream: expected chunks or end, found {self.stream!r}")
        if self.chunk_chars < 1:
            raise GptossError(f"--guard-chunk-chars: expected a positive number, found {self.chunk_chars}")
        if self.on_error not in ("block", "allow"):
            raise GptossError(f"--guard-on-error: expected block or allow, found {self.on_error!r}")
        if self.effort not in EFFORT_NAMES:
            raise GptossError(f"--guard-effort: expected low, medium or high, found {self.effort!r}")


@dataclass
class PolicyResult:
    policy: Policy
    verdict: Verdict | None
    action: str  # allow | flag | block | error
    error: str | None = None


@dataclass
class Decision:
    stage: str
    action: str  # allow | flag | block (the strictest over the policies)
    results: list[PolicyResult] = field(default_factory=list)
    latency: float = 0.0

    @property
    def blocked(self) -> bool:
        return self.action == "block"

    @property
    def flagged(self) -> bool:
        return self.action == "flag"

    @property
    def culprit(self) -> PolicyResult | None:
        return next((r for r in self.results if r.action == ("block" if self.blocked else "flag")), None) or next(
            (r for r in self.results if r.action == "error"), None
        )

    def refusal(self) -> str:
        """What the client is told instead of blocked content (the rationale stays in the audit log)."""
        culprit = self.culprit
        name = culprit.policy.name if culprit else "policy"
        if culprit is not None and culprit.action == "error":
            return f"The content could not be checked against the deployer's policy {name!r}, so it was withheld."
        what = "request" if self.stage in ("input", "tool") else "response"
        return f"This {what} was blocked by the deployer's content policy {name!r}."


class GuardMetrics:
    def __init__(self, registry):
        from prometheus_client import Counter, Histogram

        self.decisions = Counter(
            "gptoss_guard_decisions",
            "Guard decisions, by stage, policy and action",
            ["stage", "policy", "action"],
            registry=registry,
        )
        self.latency = Histogram(
            "gptoss_guard_latency_seconds",
            "Time the guard added per check, by stage",
            ["stage"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )


class Guard:
    def __init__(self, settings: GuardSettings, backend: GuardBackend, audit: AuditLog | None = None, registry=None):
        self.settings = settings
        self.policies = list(settings.policies)
        self.backend = backend
        self.audit = audit or AuditLog(settings.audit_path)
        self.metrics = GuardMetrics(registry) if registry is not None else None
        self._owned_engine = None

    @classmethod
    def build(
        cls, settings: GuardSettings, engine=None, tokenizer=None, max_model_len: int | None = None, registry=None
    ) -> "Guard":
        """The guard for ``settings``: over its endpoint, on its own LLM, or on ``engine`` (the served model)."""
        owned = None
        if settings.base_url:
            backend: GuardBackend = EndpointGuard(
                settings.base_url, settings.model, settings.api_key, settings.effort, settings.timeout
            )
        else:
            if settings.llm is not None:
                from gptoss.engine.async_engine import AsyncEngine

                owned = engine = AsyncEngine(settings.llm.engine)
                tokenizer, max_model_len = settings.llm.tokenizer, settings.llm.max_model_len
            if engine is None or tokenizer is None:
                raise GptossError("the guard needs a model: --guard-model, --guard-base-url, or the served model")
            backend = LocalGuard(
                engine,
                tokenizer,
                settings.effort,
                settings.reasoning_max_tokens,
                settings.rationale_max_chars,
                max_model_len=max_model_len,
            )
        guard = cls(settings, backend, registry=registry)
        guard._owned_engine = owned
        return guard

    async def check(self, content: str, stage: str, request_id: str, endpoint: str) -> Decision:
        """Every policy's verdict on ``content``; audited and counted."""
        if stage not in STAGES:
            raise ValueError(f"unknown guard stage {stage!r}")
        started = time.perf_counter()
        results = await asyncio.gather(*(self._one(p, content) for p in self.policies))
        latency = time.perf_counter() - started
        actions = [r.action if r.action != "error" else self.settings.on_error for r in results]
        action = "block" if "block" in actions else "flag" if "flag" in actions else "allow"
        decision = Decision(stage, action, list(results), latency)
        for r in results:
            v = r.verdict
            self.audit.write(
                AuditRecord(
                    request_id,
                    endpoint,
                    stage,
                    r.policy.name,
                    r.policy.version,
                    None if v is None else v.violation,
                    None if v is None else v.category,
                    None if v is None else v.rationale,
                    r.action,
                    round(latency * 1000, 3),
                    r.error,
                )
            )
            if self.metrics is not None:
                self.metrics.decisions.labels(stage, r.policy.name, r.action).inc()
        if self.metrics is not None:
            self.metrics.latency.labels(stage).observe(latency)
        return decision

    async def _one(self, policy: Policy, content: str) -> PolicyResult:
        try:
            reply = await self.backend.classify(policy, content)
            if reply.finish_reason == "length":
                raise VerdictError(f"the guard's answer was cut at {reply.tokens} tokens before the verdict ended")
            verdict = parse_verdict(reply.text, policy)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the guard could not decide: recorded, then on_error decides
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return PolicyResult(policy, None, "error", f"{type(exc).__name__}: {first[:300]}")
        return PolicyResult(policy, verdict, policy.action if verdict.violation else "allow")

    async def aclose(self) -> None:
        await self.backend.aclose()
        if self._owned_engine is not None:
            self._owned_engine.shutdown()
        self.audit.close()
