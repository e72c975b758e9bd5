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


# -- the work queue and leader election, by controller-runtime's and client-go's metric names ------

# controller-runtime's buckets for queue latency and work duration: 10 ns to 1000 s.
_WORKQUEUE_BUCKETS = tuple(1e-8 * 10**i for i in range(12))

WORKQUEUE_DEPTH = Gauge("workqueue_depth", "Current depth of workqueue", ["name"])
WORKQUEUE_ADDS = Counter("workqueue_adds", "Total number of adds handled by workqueue", ["name"])
WORKQUEUE_RETRIES = Counter("workqueue_retries", "Total number of retries handled by workqueue", ["name"])
WORKQUEUE_QUEUE_SECONDS = Histogram(
    "workqueue_queue_duration_seconds",
    "How long in seconds an item stays in workqueue before being requested",
    ["name"],
    buckets=_WORKQUEUE_BUCKETS,
)
WORKQUEUE_WORK_SECONDS = Histogram(
    "workqueue_work_duration_seconds",
    "How long in seconds processing an item from workqueue takes.",
    ["name"],
    buckets=_WORKQUEUE_BUCKETS,
)
WORKQUEUE_UNFINISHED_SECONDS = Gauge(
    "workqueue_unfinished_work_seconds",
    "How many seconds of work has been done that is in progress and hasn't been observed by "
    "work_duration. Large values indicate stuck threads.",
    ["name"],
)
WORKQUEUE_LONGEST_RUNNING = Gauge(
    "workqueue_longest_running_processor_seconds",
    "How many seconds has the longest running processor for workqueue been running.",
    ["name"],
)
LEADER = Gauge(
    "leader_election_master_status",
    "Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 "
    "indicates master. 'name' is the string used to identify the lease.",
    ["name"],
)
LEADER_TRANSITIONS = Counter(
    "llmpack_leader_election_transitions",
    "Times this process started or stopped leading, by event (acquired, lost, released).",
    ["event"],
)


def register_workqueue(queue: Any) -> None:
    """Gauges read from the queue at scrape time (client-go updates them every 500 ms instead),
    in the Prometheus HTTP server's thread while the event loop changes the queue: the queue's
    readers (longest_running, unfinished_work) compute from one snapshot of what is processing."""
    WORKQUEUE_DEPTH.labels(name=queue.name).set_function(lambda: queue.depth)
    WORKQUEUE_LONGEST_RUNNING.labels(name=queue.name).set_function(queue.longest_running)
    WORKQUEUE_UNFINISHED_SECONDS.labels(name=queue.name).set_function(queue.unfinished_work)
