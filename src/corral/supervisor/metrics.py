"""The supervisor's Prometheus counters, in the gateway's registry (served on /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class SupervisorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.incidents = Counter(
            "corral_supervisor_incidents", "Incidents opened, by kind", ["kind"], registry=self.registry
        )
        self.actions = Counter(
            "corral_supervisor_actions",
            "Healing actions and how they ended (healed, reverted, failed, skipped, rejected, proposed)",
            ["action", "outcome"],
            registry=self.registry,
        )
