"""Readings from a llama-server replica's /slots and /metrics endpoints."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class ReplicaMetrics:
    prompt_tokens_total: float = 0.0
    predicted_tokens_total: float = 0.0
    predicted_tokens_per_second: float = 0.0
    requests_processing: float = 0.0
    requests_deferred: float = 0.0


def parse_metrics(text: str) -> ReplicaMetrics:
    """Parse llama-server's Prometheus text (metric names `llamacpp:*`)."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name.removeprefix("llamacpp:")] = float(sample.value)
    return ReplicaMetrics(
        prompt_tokens_total=values.get("prompt_tokens_total", 0.0),
        predicted_tokens_total=values.get("tokens_predicted_total", 0.0),
        predicted_tokens_per_second=values.get("predicted_tokens_seconds", 0.0),
        requests_processing=values.get("requests_processing", 0.0),
        requests_deferred=values.get("requests_deferred", 0.0),
    )


def busy_slots(slots_json: object) -> tuple[int, int]:
    """(busy, total) from the JSON list /slots returns."""
    if not isinstance(slots_json, list):
        return 0, 0
    busy = sum(1 for s in slots_json if isinstance(s, dict) and s.get("is_processing"))
    return busy, len(slots_json)
