"""The router's own Prometheus metrics, and the merge of every replica's /metrics into one page.

The router exposes one /metrics for all its replicas (a pod's Service reaches only the router's
port; the replicas of `llmpack launch` listen on loopback), so each replica's samples get a
`replica="i"` label and samples of the same family are grouped under one HELP/TYPE header, as the
text format requires. Parsing and re-writing with prometheus-client keeps the output valid even when
replicas disagree on which families they expose.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from llmpack.launcher.replica import Replica

# vLLM serves the classic text format; answer in the same so any scraper reads the merged page.
METRICS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
REPLICA_LABEL = "replica"


class RouterMetrics:
    """Counters the router keeps about itself, in a registry of its own (several routers may share a
    process in tests; the global registry would make them collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "llmpack_router_requests",
            "Requests answered by a replica, by replica and HTTP status.",
            [REPLICA_LABEL, "code"],
            registry=self.registry,
        )
        self.unroutable = Counter(
            "llmpack_router_unroutable_requests",
            "Requests answered 503 by the router because no replica was healthy.",
            registry=self.registry,
        )
        self.retries = Counter(
            "llmpack_router_retries",
            "Requests sent to another replica because this one could not be connected.",
            [REPLICA_LABEL],
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "llmpack_router_upstream_errors",
            "Failures talking to a replica: connect (request not sent, retried), response "
            "(broken after the request was sent, not retried) or timeout (nothing received for "
            "--read-timeout seconds; 504, or the client's connection broken mid-answer).",
            [REPLICA_LABEL, "kind"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "llmpack_router_rejected_requests",
            "Requests the router refused itself: overloaded (503, --max-in-flight requests already "
            "in flight), body_too_large (413, over --max-body-bytes) or body_timeout (408, the body "
            "not received within --body-timeout).",
            ["reason"],
            registry=self.registry,
        )
        self.scrape_errors = Counter(
            "llmpack_router_replica_scrape_errors",
            "Failed reads of a replica's /metrics while serving the merged page.",
            [REPLICA_LABEL],
            registry=self.registry,
        )
        self.client_disconnects = Counter(
            "llmpack_router_client_disconnects",
            "Requests whose client went away before the answer was complete; the request to the "
            "replica was closed too, which makes vLLM abort it.",
            [REPLICA_LABEL],
            registry=self.registry,
        )
        self.replica_exits = Counter(
            "llmpack_replica_exits",
            "Replica servers that exited without being stopped (`llmpack launch` only); the "
            "processes each left behind were killed with it.",
            [REPLICA_LABEL],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "llmpack_router_requests_in_flight",
            "Requests sent to a replica and not yet fully answered.",
            [REPLICA_LABEL],
            registry=self.registry,
        )
        self.healthy = Gauge(
            "llmpack_router_replica_healthy",
            "1 when the router sends requests to the replica, else 0.",
            [REPLICA_LABEL],
            registry=self.registry,
        )

        self.replicas = Gauge(
            "llmpack_router_replicas",
            "Replicas this router fronts, serving or not.",
            registry=self.registry,
        )
        self.replicas_serving = Gauge(
            "llmpack_router_replicas_serving",
            "Replicas the router sends requests to now; the pod is ready while this is at least 1.",
            registry=self.registry,
        )

    def observe(self, replicas: Iterable[Replica]) -> None:
        """Copy the live per-replica state into gauges (cheaper than updating them per request)."""
        replicas = list(replicas)
        for replica in replicas:
            self.in_flight.labels(replica.label).set(replica.in_flight)
            self.healthy.labels(replica.label).set(1 if replica.serving else 0)
        self.replicas.set(len(replicas))
        self.replicas_serving.set(sum(r.serving for r in replicas))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def merge_replica_metrics(pages: Mapping[str, str]) -> bytes:
    """Prometheus text of every replica (keyed by replica label) merged into one page."""
    families: dict[str, Metric] = {}
    for replica_label, page in pages.items():
        for family in text_string_to_metric_families(page):
            merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            merged.samples.extend(with_replica_label(family.samples, replica_label))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_FixedFamilies(list(families.values())))
    return generate_latest(registry)


def with_replica_label(samples: Sequence[Sample], replica_label: str) -> Iterator[Sample]:
    for sample in samples:
        yield sample._replace(labels={**sample.labels, REPLICA_LABEL: replica_label})


class _FixedFamilies:
    """A collector that yields families already built (prometheus-client only writes collectors)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families
