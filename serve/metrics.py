"""The server's Prometheus metrics (``GET /metrics``), in a registry of its own per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Requests by endpoint and status, tokens, queue depth, sequences in flight, and the
    time-to-first-token and per-token latency histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("hybrid_requests", "HTTP requests answered", ["endpoint", "status"],
                                registry=self.registry)
        self.prompt_tokens = Counter("hybrid_prompt_tokens", "prompt tokens read (visual ones included)",
                                     registry=self.registry)
        self.visual_tokens = Counter("hybrid_visual_tokens", "visual tokens read", registry=self.registry)
        self.completion_tokens = Counter("hybrid_completion_tokens", "tokens generated", registry=self.registry)
        self.queue_depth = Gauge("hybrid_queue_depth", "requests waiting for a slot", registry=self.registry)
        self.active = Gauge("hybrid_active_sequences", "sequences prefilling or decoding", registry=self.registry)
        self.time_to_first_token = Histogram("hybrid_time_to_first_token_seconds", "request in -> first token",
                                             buckets=LATENCY_BUCKETS, registry=self.registry)
        self.inter_token_latency = Histogram("hybrid_inter_token_latency_seconds", "between two tokens of a sequence",
                                             buckets=LATENCY_BUCKETS, registry=self.registry)

    def text(self) -> bytes:
        return generate_latest(self.registry)
