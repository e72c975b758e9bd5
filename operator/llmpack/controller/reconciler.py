"""One level-triggered pass over one LLMDeployment: observe, decide once, act.

    observe   controller/observe.py: an immutable Snapshot from the watch caches (I/O only)
    decide    planner/reconcile.py decide: Snapshot -> Outcome (pure; the profiling Job's states,
              the prune set, readiness, the status, events, when to look again)
    act       controller/act.py: the cache write, applies, deletes; a refused apply comes back as
              an observation and the same pass is decided again with it (its outcome is a status)

The status and events go out afterwards (controller/operator.py), once, and only when they
changed. Nothing depends on having seen an earlier event: a pass after an operator restart, a
lost watch or a hand edit does the same work.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from llmpack.controller.act import Actor
from llmpack.controller.cache import ProfileCache
from llmpack.controller.observe import Observer
from llmpack.hardware.cluster import ClusterFacts
from llmpack.planner.reconcile import decide
from llmpack.planner.snapshot import Settings
from llmpack.render.plan import LABEL_DEPLOYMENT
from llmpack.runtime.client import Client
from llmpack.runtime.store import Store

# The operator's settings (chart values and flags): what the decision needs to know of them.
OperatorConfig = Settings


@dataclass
class Result:
    status: dict[str, Any]
    retry_after: float | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)


class Reconciler:
    def __init__(self, kube: Client, config: Settings, cluster: ClusterFacts, store: Store | None = None):
        self.kube = kube
        self.config = config
        self.cluster = cluster
        self.store = store if store is not None else Store(index_label=LABEL_DEPLOYMENT)
        self.cache = ProfileCache(kube, config.operator_namespace)
        self.observer = Observer(
            store=self.store, cache=self.cache, cluster=cluster, settings=config, kube=kube
        )
        self.actor = Actor(kube=kube, store=self.store, cache=self.cache)

    def reconcile(self, body: dict[str, Any]) -> Result:
        snapshot = self.observer.observe(body)
        outcome = decide(snapshot, self.config)
        refused = self.actor.act(outcome)
        if refused is not None:
            outcome = decide(replace(snapshot, refused=refused), self.config)
        return Result(
            status=outcome.status,
            retry_after=outcome.requeue_after,
            events=[(e.type, e.reason, e.message) for e in outcome.events],
        )
