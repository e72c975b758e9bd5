"""Metrics of the generic runtime, by controller-runtime's and client-go's names: the work queue
(workqueue_*) and leader election (leader_election_master_status). Registered in prometheus_client's
default registry; whoever serves /metrics serves them."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

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
    "leader_election_transitions",
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
