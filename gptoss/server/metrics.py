"""Prometheus metrics: queue depth, running requests, tokens/s, time to first token, time per output token."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self, stats):
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue = Gauge("gptoss_queue_depth", "Requests waiting for a cache slot", registry=r)
        self.running = Gauge("gptoss_running_requests", "Requests in the running batch", registry=r)
        self.tps = Gauge("gptoss_generation_tokens_per_second", "Tokens generated per second (10 s window)", registry=r)
        self.tokens = Counter("gptoss_generation_tokens", "Tokens generated", registry=r)
        self.prompt_tokens = Counter("gptoss_prompt_tokens", "Prompt tokens received", registry=r)
        self.requests = Counter(
            "gptoss_requests", "Requests finished, by endpoint and outcome", ["endpoint", "outcome"], registry=r
        )
        self.prefix_hits = Gauge("gptoss_prefix_cache_hits", "Requests that reused a cached prompt prefix", registry=r)
        self.cached_tokens = Gauge("gptoss_prefix_cache_tokens", "Prompt tokens found in the prefix cache", registry=r)
        self.hit_rate = Gauge(
            "gptoss_prefix_cache_hit_rate", "Share of admitted prompt tokens found in the prefix cache", registry=r
        )
        self.ttft = Histogram(
            "gptoss_time_to_first_token_seconds",
            "Time to first token",
            registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.tpot = Histogram(
            "gptoss_time_per_output_token_seconds",
            "Time per output token after the first",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
        )
        self._stats = stats

    def render(self) -> bytes:
        s = self._stats
        self.queue.set(s.waiting)
        self.running.set(s.running)
        self.tps.set(s.tokens_per_second())
        self.prefix_hits.set(s.prefix_hits)
        self.cached_tokens.set(s.cached_tokens)
        self.hit_rate.set(s.cached_tokens / s.prompt_tokens if s.prompt_tokens else 0.0)
        return generate_latest(self.registry)
