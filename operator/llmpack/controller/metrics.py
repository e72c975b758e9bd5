"""Prometheus metrics of the operator (scraped from --metrics-port, default 8080 /metrics)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from typing import Any, get_args

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

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


# -- what the LLMDeployments' statuses say, computed when Prometheus scrapes (kube-state-metrics'
# way): nothing is recomputed per status write, and a deleted LLMDeployment's series are gone at
# the next scrape. One series per LLMDeployment is labelled like its serving pods' metrics once
# scraped (namespace, llmdeployment), so a dashboard can put them beside vLLM's; the chart's
# ServiceMonitor keeps these labels (honorLabels) instead of the operator pod's namespace.
LLMD_LABELS = ("namespace", "llmdeployment")
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "llmpack_llmdeployments": ("LLMDeployments by phase.", ("phase",)),
    "llmpack_gpus_in_use": ("GPUs the LLMDeployments' replicas occupy with packing.", ()),
    "llmpack_gpus_exclusive_equivalent": (
        "GPUs the same replicas would occupy with one replica per GPU (or per its GPUs, spanning several).",
        (),
    ),
    "llmpack_llmdeployment_phase": (
        "1 for an LLMDeployment's current phase, 0 for the others.",
        (*LLMD_LABELS, "phase"),
    ),
    "llmpack_llmdeployment_gpus_desired": (
        "GPUs an LLMDeployment asks for (spec.gpu.count: the user, kubectl scale or its autoscaler).",
        LLMD_LABELS,
    ),
    "llmpack_llmdeployment_gpus": ("GPUs an LLMDeployment's pods occupy now (status.gpus).", LLMD_LABELS),
    "llmpack_llmdeployment_replicas": (
        "vLLM replicas an LLMDeployment wants (status.replicas).",
        LLMD_LABELS,
    ),
    "llmpack_llmdeployment_ready_replicas": (
        "vLLM replicas of an LLMDeployment serving (status.readyReplicas).",
        LLMD_LABELS,
    ),
    "llmpack_llmdeployment_slo_seconds": (
        "An LLMDeployment's latency objectives (spec.slo), by objective: "
        + ", ".join(objective for _, objective in SLO_OBJECTIVES)
        + ".",
        (*LLMD_LABELS, "objective"),
    ),
    "llmpack_llmdeployment_predicted_tokens_per_second_per_gpu": (
        "Prompt+output tokens/s one GPU of an LLMDeployment is predicted to serve at B_opt "
        "(status.recommendation.predictedTokensPerSecondPerGPU).",
        LLMD_LABELS,
    ),
}
Samples = dict[str, list[tuple[tuple[str, ...], float]]]


class LLMDeploymentsCollector(Collector):
    """The families above, from the objects `observe_phases` last pointed it at (the operator
    points it at its live view of every LLMDeployment once)."""

    def __init__(self) -> None:
        self.objects: Iterable[dict[str, Any]] = ()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        samples = samples_of(self._snapshot())
        for name, (documentation, labels) in FAMILIES.items():
            family = GaugeMetricFamily(name, documentation, labels=list(labels))
            for values, value in samples.get(name, []):
                family.add_metric(list(values), value)
            yield family

    def _snapshot(self) -> list[dict[str, Any]]:
        # the watch handlers change the operator's dict on the event loop while Prometheus'
        # thread reads: a copy, taken again if the dict changed size meanwhile
        for _ in range(5):
            try:
                return list(self.objects)
            except RuntimeError:
                continue
        return []


COLLECTOR = LLMDeploymentsCollector()


def observe_phases(objects: Iterable[dict[str, Any]]) -> None:
    """Publish what `objects` (LLMDeployments as the API server returns them) say, from now on:
    a live view (a dict's values()) keeps the series current with no further call."""
    COLLECTOR.objects = objects


def samples_of(objects: Iterable[dict[str, Any]]) -> Samples:
    phases: Tally[str] = Tally()
    gpus = exclusive = 0
    samples: Samples = {}
    for obj in objects:
        status = obj.get("status") or {}
        phase = status.get("phase", "Pending")
        phases[phase] += 1
        rec = status.get("recommendation") or {}
        gpus += rec.get("gpus", 0) or 0
        # a replica over several GPUs (tensor or pipeline parallel) holds them whole either way
        exclusive += (rec.get("replicas", 0) or 0) * (rec.get("gpusPerReplica", 1) or 1)
        for name, values, value in deployment_series(obj, status, rec, phase):
            samples.setdefault(name, []).append((values, value))
    samples["llmpack_llmdeployments"] = [((phase,), phases.get(phase, 0)) for phase in PHASES]
    samples["llmpack_gpus_in_use"] = [((), gpus)]
    samples["llmpack_gpus_exclusive_equivalent"] = [((), exclusive)]
    return samples


def deployment_series(
    obj: dict[str, Any], status: dict[str, Any], rec: dict[str, Any], phase: str
) -> list[tuple[str, tuple[str, ...], float]]:
    """One LLMDeployment's series: (family, label values, value); a figure it lacks is left out."""
    # the serving pods' label llmpack.io/llmdeployment, which scrapes relabel to `llmdeployment`
    key: tuple[str, ...] = (obj["metadata"].get("namespace", ""), label_value(obj["metadata"]["name"]))
    spec = obj.get("spec") or {}
    series: list[tuple[str, tuple[str, ...], float]] = [
        ("llmpack_llmdeployment_phase", (*key, p), float(p == phase)) for p in PHASES
    ]
    series.append(("llmpack_llmdeployment_gpus_desired", key, (spec.get("gpu") or {}).get("count", 1)))
    for name, value in (
        ("llmpack_llmdeployment_gpus", status.get("gpus")),
        ("llmpack_llmdeployment_replicas", status.get("replicas")),
        ("llmpack_llmdeployment_ready_replicas", status.get("readyReplicas")),
        (
            "llmpack_llmdeployment_predicted_tokens_per_second_per_gpu",
            rec.get("predictedTokensPerSecondPerGPU"),
        ),
    ):
        if value is not None:
            series.append((name, key, value))
    slo = spec.get("slo") or {}
    for field, objective in SLO_OBJECTIVES:
        if slo.get(field) is not None:
            series.append(("llmpack_llmdeployment_slo_seconds", (*key, objective), slo[field] / 1000))
    return series


REGISTRY.register(COLLECTOR)  # last: registering collects once, with every function above defined
