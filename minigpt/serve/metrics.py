"""Prometheus metrics of one server, in their own registry (two apps in one process never collide)."""

from __future__ import annotations

__all__ = ["ServeMetrics", "ENDPOINTS"]

ENDPOINTS = ("/", "/v1/generate", "/v1/model", "/healthz", "/metrics", "/v1/models", "/v1/completions",
             "/v1/chat/completions")
# Latency buckets from 5 ms (a cache hit) to a minute (a long CPU generation under load).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServeMetrics:
    """Counters for traffic, gauges for the queue, histograms for latency and batch size."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("minigpt_requests", "HTTP requests by endpoint", ["endpoint"], registry=r)
        self.errors = Counter("minigpt_errors", "responses with status >= 400", ["endpoint", "status"], registry=r)
        self.rejected = Counter("minigpt_rejected", "generate requests refused with 503 (queue full)", registry=r)
        self.tokens = Counter("minigpt_tokens_generated", "tokens produced by the model", registry=r)
        self.prompt_tokens = Counter("minigpt_prompt_tokens", "prompt tokens read", registry=r)
        self.latency = Histogram(
            "minigpt_request_latency_seconds", "generate latency, request received to last token",
            ["stream"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge("minigpt_queue_depth", "requests waiting for the worker", registry=r)
        self.active = Gauge("minigpt_active_requests", "requests being decoded right now", registry=r)
        self.batch_size = Histogram(
            "minigpt_batch_size", "rows decoded together", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r
        )
        self.cache_hits = Counter("minigpt_cache_hits", "deterministic requests answered from the cache", registry=r)
        self.cache_misses = Counter("minigpt_cache_misses", "deterministic requests not in the cache", registry=r)
        self.cache_hit_rate = Gauge("minigpt_cache_hit_rate", "cache hits / cache lookups so far", registry=r)
        self.cancelled = Counter("minigpt_cancelled", "requests whose client went away before the end", registry=r)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample's current value (for tests and the notebook); 0.0 when it was never set."""
        v = self.registry.get_sample_value(name, labels or {})
        return 0.0 if v is None else v
