"""Prometheus metrics of the operator (scraped from --metrics-port, default 8080 /metrics)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable
from typing import Any, get_args

from prometheus_client import Counter, Gauge, Histogram

from llmpack.api.llmdeployment import Phase

PHASES: tuple[str, ...] = get_args(Phase)

RECONCILE_SECONDS = Histogram(
    "llmpack_reconcile_duration_seconds",
    "Time one reconcile of one LLMDeployment took, API calls included.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RECONCILE_ERRORS = Counter(
    "llmpack_reconcile_errors_total", "Reconciles that ended in an error, by reason.", ["reason"]
)
PROFILE_CACHE = Counter(
    "llmpack_profile_cache_lookups_total",
    "Profile cache lookups, by result (hit, miss, invalid).",
    ["result"],
)
DEPLOYMENTS_BY_PHASE = Gauge("llmpack_llmdeployments", "LLMDeployments by phase.", ["phase"])
GPUS_IN_USE = Gauge("llmpack_gpus_in_use", "GPUs the LLMDeployments' replicas occupy with packing.")
GPUS_EXCLUSIVE = Gauge(
    "llmpack_gpus_exclusive_equivalent", "GPUs the same replicas would occupy with one replica per GPU."
)


def observe_phases(objects: Iterable[dict[str, Any]]) -> None:
    """Recompute the per-phase and GPU gauges from the operator's view of every LLMDeployment."""
    phases: Tally[str] = Tally()
    gpus = exclusive = 0
    for obj in objects:
        status = obj.get("status") or {}
        phases[status.get("phase", "Pending")] += 1
        rec = status.get("recommendation") or {}
        gpus += rec.get("gpus", 0) or 0
        exclusive += rec.get("replicas", 0) or 0
    for phase in PHASES:
        DEPLOYMENTS_BY_PHASE.labels(phase=phase).set(phases.get(phase, 0))
    GPUS_IN_USE.set(gpus)
    GPUS_EXCLUSIVE.set(exclusive)
