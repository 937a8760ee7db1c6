"""Prometheus metrics of the gateway, per expert and replica, in a registry owned by the app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "corral_requests",
            "Requests answered by the gateway",
            ["endpoint", "expert", "replica", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "corral_request_duration_seconds",
            "Time from request to the last byte of the answer",
            ["endpoint", "expert"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "corral_time_to_first_token_seconds",
            "Time from request to the first streamed chunk",
            ["expert"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_per_second = Gauge(
            "corral_tokens_per_second",
            "Measured decode speed (EWMA) of a replica",
            ["expert", "replica"],
            registry=r,
        )
        self.generated_tokens = Counter(
            "corral_generated_tokens", "Completion tokens generated", ["expert"], registry=r
        )
        self.queue_depth = Gauge(
            "corral_queue_depth",
            "Requests admitted for an expert and not yet finished",
            ["expert"],
            registry=r,
        )
        self.in_flight = Gauge(
            "corral_replica_in_flight", "Requests on a replica", ["expert", "replica"], registry=r
        )
        self.healthy = Gauge(
            "corral_replica_healthy", "1 when a replica is ready", ["expert", "replica"], registry=r
        )
        self.routes = Counter(
            "corral_route_decisions",
            "How the expert was chosen (explicit, alias, auto) and which",
            ["method", "expert"],
            registry=r,
        )
        self.retries = Counter(
            "corral_retries", "Attempts moved to another replica", ["expert", "reason"], registry=r
        )
        self.fallbacks = Counter(
            "corral_fallbacks",
            "Requests answered by a fallback expert",
            ["requested", "served_by"],
            registry=r,
        )
        self.rejected = Counter(
            "corral_rejected", "Requests refused by admission control", ["expert"], registry=r
        )
