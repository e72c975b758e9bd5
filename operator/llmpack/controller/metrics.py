"""Prometheus metrics of the operator (scraped from --metrics-port, default 8080 /metrics)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable
from typing import Any, get_args

from prometheus_client import Counter, Gauge, Histogram

from llmpack.api.llmdeployment import Phase, SLOSpec
from llmpack.render.plan import label_value

PHASES: tuple[str, ...] = get_args(Phase)
# spec.slo's fields as (camelCase key, objective label): ("itlP99Ms", "itl_p99").
SLO_OBJECTIVES: tuple[tuple[str, str], ...] = tuple(
    (info.alias or name, name.removesuffix("_ms")) for name, info in SLOSpec.model_fields.items()
)

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


# -- one series per LLMDeployment, labelled like its serving pods' metrics once scraped (namespace,
# llmdeployment), so a dashboard can put them beside vLLM's; the chart's ServiceMonitor keeps these
# labels (honorLabels) instead of the operator pod's namespace.
LLMD_LABELS = ("namespace", "llmdeployment")
LLMD_PHASE = Gauge(
    "llmpack_llmdeployment_phase",
    "1 for an LLMDeployment's current phase, 0 for the others.",
    [*LLMD_LABELS, "phase"],
)
LLMD_GPUS_DESIRED = Gauge(
    "llmpack_llmdeployment_gpus_desired",
    "GPUs an LLMDeployment asks for (spec.gpu.count: the user, kubectl scale or its autoscaler).",
    LLMD_LABELS,
)
LLMD_GPUS = Gauge(
    "llmpack_llmdeployment_gpus", "GPUs an LLMDeployment's pods occupy now (status.gpus).", LLMD_LABELS
)
LLMD_REPLICAS = Gauge(
    "llmpack_llmdeployment_replicas", "vLLM replicas an LLMDeployment wants (status.replicas).", LLMD_LABELS
)
LLMD_READY_REPLICAS = Gauge(
    "llmpack_llmdeployment_ready_replicas",
    "vLLM replicas of an LLMDeployment serving (status.readyReplicas).",
    LLMD_LABELS,
)
LLMD_SLO_SECONDS = Gauge(
    "llmpack_llmdeployment_slo_seconds",
    "An LLMDeployment's latency objectives (spec.slo), by objective: "
    + ", ".join(objective for _, objective in SLO_OBJECTIVES)
    + ".",
    [*LLMD_LABELS, "objective"],
)
LLMD_PREDICTED_TOKENS = Gauge(
    "llmpack_llmdeployment_predicted_tokens_per_second_per_gpu",
    "Prompt+output tokens/s one GPU of an LLMDeployment is predicted to serve at B_opt "
    "(status.recommendation.predictedTokensPerSecondPerGPU).",
    LLMD_LABELS,
)

# The per-LLMDeployment series set by the last observe_phases: those it does not set again (a
# deleted LLMDeployment, an SLO removed) are removed rather than left at their last value.
_published: set[tuple[Gauge, tuple[str, ...]]] = set()


def observe_phases(objects: Iterable[dict[str, Any]]) -> None:
    """Recompute the per-phase and GPU gauges, and every LLMDeployment's own series, from the
    operator's view of every LLMDeployment."""
    phases: Tally[str] = Tally()
    gpus = exclusive = 0
    series: dict[tuple[Gauge, tuple[str, ...]], float] = {}
    for obj in objects:
        status = obj.get("status") or {}
        phase = status.get("phase", "Pending")
        phases[phase] += 1
        rec = status.get("recommendation") or {}
        gpus += rec.get("gpus", 0) or 0
        exclusive += rec.get("replicas", 0) or 0
        series.update(deployment_series(obj, status, rec, phase))
    for phase in PHASES:
        DEPLOYMENTS_BY_PHASE.labels(phase=phase).set(phases.get(phase, 0))
    GPUS_IN_USE.set(gpus)
    GPUS_EXCLUSIVE.set(exclusive)
    for (gauge, labels), value in series.items():
        gauge.labels(*labels).set(value)
    for gauge, labels in _published - series.keys():
        gauge.remove(*labels)
    _published.clear()
    _published.update(series)


def deployment_series(
    obj: dict[str, Any], status: dict[str, Any], rec: dict[str, Any], phase: str
) -> dict[tuple[Gauge, tuple[str, ...]], float]:
    """One LLMDeployment's series: (gauge, label values) -> value; a figure it lacks is left out."""
    # the serving pods' label llmpack.io/llmdeployment, which scrapes relabel to `llmdeployment`
    key = (obj["metadata"].get("namespace", ""), label_value(obj["metadata"]["name"]))
    spec = obj.get("spec") or {}
    series: dict[tuple[Gauge, tuple[str, ...]], float] = {
        (LLMD_PHASE, (*key, p)): float(p == phase) for p in PHASES
    }
    series[(LLMD_GPUS_DESIRED, key)] = (spec.get("gpu") or {}).get("count", 1)
    for gauge, value in (
        (LLMD_GPUS, status.get("gpus")),
        (LLMD_REPLICAS, status.get("replicas")),
        (LLMD_READY_REPLICAS, status.get("readyReplicas")),
        (LLMD_PREDICTED_TOKENS, rec.get("predictedTokensPerSecondPerGPU")),
    ):
        if value is not None:
            series[(gauge, key)] = value
    slo = spec.get("slo") or {}
    for field, objective in SLO_OBJECTIVES:
        if slo.get(field) is not None:
            series[(LLMD_SLO_SECONDS, (*key, objective))] = slo[field] / 1000
    return series


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
