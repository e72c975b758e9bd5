"""The kopf side of the operator: watches feed a work queue, workers run reconciles.

kopf provides the watch streams, reconnection and liveness; it runs standalone (no kopf peering:
several replicas are arbitrated by the Lease of leader.py). Every watched event only enqueues the
affected LLMDeployment; the reconcile itself is level-triggered and idempotent (reconciler.py), so
kopf's per-handler progress bookkeeping (annotations, finalizers) is not needed: deletion is left
to Kubernetes' garbage collector through owner references, and an LLMDeployment can always be
deleted, operator running or not.

With leader election every replica watches and keeps its caches current, but only the leader's
work queue runs: a standby collects keys and reconciles nothing. When the lease is lost the queue
stops and the process exits at once (client-go's and controller-runtime's default: threads that
are mid-reconcile die with it, and the Deployment restarts the container as a new candidate); a
clean stop (SIGTERM) drains the queue for a few seconds, then releases the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from llmpack.api import gpupool
from llmpack.api.llmdeployment import GROUP, PLURAL, VERSION
from llmpack.controller import metrics
from llmpack.controller.client import KubeClient, KubeError
from llmpack.controller.pool import PoolReconciler
from llmpack.controller.reconciler import OperatorConfig, Reconciler, Result
from llmpack.hardware.cluster import ClusterFacts, NodeFacts
from llmpack.planner.conditions import comparable, pod_problem
from llmpack.planner.membership import pool_name
from llmpack.render.plan import LABEL_DEPLOYMENT, LABEL_MANAGED_BY, MANAGED_BY, label_value
from llmpack.runtime.leader import LeaderElectionConfig, LeaderElector, LeaseLock, NotLeader
from llmpack.runtime.store import Store
from llmpack.runtime.workqueue import WorkQueue

logger = logging.getLogger("llmpack.operator")

Key = tuple[str, str]  # (namespace, name)
MANAGED = {LABEL_MANAGED_BY: MANAGED_BY}
POD_PROBLEM_DELAY_SECONDS = 2.0
SHUTDOWN_DRAIN_SECONDS = 5.0  # a clean stop waits this long for running reconciles


@dataclass
class OperatorState:
    kube: KubeClient
    config: OperatorConfig
    workers: int = 4
    cluster: ClusterFacts = field(default_factory=ClusterFacts)
    objects: dict[Key, dict[str, Any]] = field(default_factory=dict)
    deployment_states: dict[Key, tuple[Any, ...]] = field(default_factory=dict)  # what last triggered a pass
    pod_problems: dict[Key, str] = field(default_factory=dict)  # managed pods that do not run, and why
    autoscaler_generations: dict[Key, int | None] = field(default_factory=dict)  # what last triggered a pass
    # the watch cache every pass reads the LLMDeployments' objects from (observe.py)
    store: Store = field(default_factory=lambda: Store(index_label=LABEL_DEPLOYMENT))
    queue: WorkQueue[Key] | None = None
    reconciler: Reconciler = field(init=False)
    pools: dict[Key, dict[str, Any]] = field(default_factory=dict)  # GPUPools, as the watch shows them
    pool_queue: WorkQueue[Key] | None = None  # GPUPools' passes, beside the LLMDeployments'
    pool_reconciler: PoolReconciler = field(init=False)
    pool_queue_stopping: asyncio.Future[None] | None = None
    leader_election: LeaderElectionConfig | None = None  # None: reconcile at once, alone
    elector: LeaderElector | None = None
    exit_on_lost_lease: Any = None  # what to call when leading is lost; default: os._exit(1)

    def __post_init__(self) -> None:
        self.reconciler = Reconciler(self.kube, self.config, self.cluster, self.store)
        self.pool_reconciler = PoolReconciler(
            kube=self.kube, store=self.store, cache=self.reconciler.cache, members=self.members_in
        )
        metrics.observe_phases(self.objects.values())  # a live view: /metrics reads it at each scrape

    def seed_cluster_facts(self) -> None:
        for node in self.kube.list("Node"):
            self.cluster.nodes[node["metadata"]["name"]] = NodeFacts.from_node(node)
        try:
            for device_class in self.kube.list("DeviceClass"):
                self.cluster.device_classes.add(device_class["metadata"]["name"])
            for slice_ in self.kube.list("ResourceSlice"):
                self.cluster.publish_slice(slice_["metadata"]["name"], slice_)
        except KubeError as err:  # a cluster without DRA (resource.k8s.io/v1) still serves other modes
            logger.info("DRA objects not listed (%s); MPS through DRA is not offered", err)

    def enqueue(self, key: Key) -> None:
        if self.queue is not None:
            self.queue.add(key)

    def enqueue_soon(self, key: Key, delay: float = POD_PROBLEM_DELAY_SECONDS) -> None:
        """For news that can wait a moment (a pod's problem): many pods of one LLMDeployment
        collapse into one pass, and fresh specs are not queued behind them."""
        if self.queue is not None:
            self.queue.add_after(key, delay)

    def owner_of_pod(self, namespace: str, deployment_label: str) -> Key | None:
        """The LLMDeployment whose pods carry `deployment_label` (a pod's owner is its Job or
        ReplicaSet; the label names the LLMDeployment, shortened with a hash when too long)."""
        key = (namespace, deployment_label)
        if key in self.objects:
            return key
        return next(
            (k for k in self.objects if k[0] == namespace and label_value(k[1]) == deployment_label), None
        )

    def enqueue_all(self) -> None:
        for key in list(self.objects):
            self.enqueue(key)
        for key in list(self.pools):
            self.enqueue_pool(key)

    def members_in(self, namespace: str) -> list[dict[str, Any]]:
        return [body for (ns, _), body in list(self.objects.items()) if ns == namespace]

    def enqueue_pool(self, key: Key) -> None:
        if self.pool_queue is not None:
            self.pool_queue.add(key)

    def enqueue_members(self, key: Key) -> None:
        """Every LLMDeployment whose spec.gpuPoolRef names the pool `key`."""
        namespace, name = key
        for body in self.members_in(namespace):
            if pool_name(body.get("spec") or {}) == name:
                self.enqueue((namespace, body["metadata"]["name"]))

    # -- leading --------------------------------------------------------------------------------

    def start_queue(self) -> None:
        self.queue = WorkQueue(
            self.process, workers=self.workers, expected_errors=(KubeError, NotLeader), name="llmdeployment"
        )
        # one worker: pools are few, and two passes of one pool never run at once anyway
        self.pool_queue = WorkQueue(
            self.process_pool, workers=1, expected_errors=(KubeError, NotLeader), name="gpupool"
        )
        if self.leader_election is None:
            self.queue.start()
            self.pool_queue.start()
            return
        lock = LeaseLock(
            KubeClient(self.kube.api, self.kube.field_manager),  # unfenced: it is what renews
            self.leader_election.lease_namespace,
            self.leader_election.lease_name,
        )
        self.elector = LeaderElector(
            lock,
            self.leader_election,
            on_started_leading=self.started_leading,
            on_stopped_leading=self.stopped_leading,
        )
        if hasattr(self.kube, "fence"):
            self.kube.fence = self.elector.is_leading
        self.elector.start()

    def started_leading(self) -> None:
        """The caches are warm: every known LLMDeployment gets a pass, then events as they come."""
        logger.info("leading: reconciling %d LLMDeployments", len(self.objects))
        self.enqueue_all()
        assert self.queue is not None  # made by start_queue before the elector it starts calls this
        assert self.pool_queue is not None
        self.queue.start()
        self.pool_queue.start()

    def stopped_leading(self) -> None:
        """Lost the lease: stop reconciling now. The fence already refuses writes; the queue stops
        handing out keys, and the process exits so nothing still running can carry on."""
        assert self.queue is not None  # as in started_leading
        if self.pool_queue is not None:
            self.pool_queue_stopping = asyncio.ensure_future(self.pool_queue.stop())
        task = asyncio.ensure_future(self.queue.stop())
        logger.critical("leader election lost: exiting so that a new candidate takes over")
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        if self.exit_on_lost_lease is not None:
            self.exit_on_lost_lease(task)
        else:
            os._exit(1)

    async def shutdown(self) -> None:
        if self.pool_queue is not None:
            await self.pool_queue.stop(drain=SHUTDOWN_DRAIN_SECONDS)
        if self.queue is not None:
            await self.queue.stop(drain=SHUTDOWN_DRAIN_SECONDS)
        if self.elector is not None:
            await self.elector.stop()

    # -- one reconcile ----------------------------------------------------------------------------

    async def process(self, key: Key) -> float | None:
        """One reconcile; returns the plain delay it asks for (waiting), raises to be retried
        with backoff (workqueue.py)."""
        body = self.objects.get(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None  # deleted: garbage collection removes what it owned
        started = time.monotonic()
        try:
            result = await asyncio.to_thread(self.reconciler.reconcile, body)
            updated = await asyncio.to_thread(self._write_status, key, body, result)
            # Back on the event loop, where the watch handlers change self.objects too. Keep the
            # newest copy, so that the next pass does not start from the status this one replaced
            # (a watch event of an earlier write may have arrived meanwhile).
            current = self.objects.get(key)
            if updated is not None and current is not None and not older(updated, current):
                self.objects[key] = updated
        except KubeError as err:
            if err.namespace_terminating:
                return None  # its namespace is going away, and the LLMDeployment with it
            metrics.RECONCILE_ERRORS.labels(reason=f"api_{err.error_class.value.lower()}").inc()
            raise  # the queue retries it with backoff, never before the server's Retry-After
        except NotLeader:
            metrics.RECONCILE_ERRORS.labels(reason="not_leader").inc()
            raise
        finally:
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
        return result.retry_after

    async def process_pool(self, key: Key) -> float | None:
        """One pass of a GPUPool; its status is written when it changed, and every member is
        queued then (their pods follow the placement in it)."""
        body = self.pools.get(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        try:
            status = await asyncio.to_thread(self.pool_reconciler.reconcile, body)
            if comparable(body.get("status") or {}) != comparable(status):
                namespace, name = key
                updated = await asyncio.to_thread(
                    self.kube.patch_status,
                    gpupool.KIND,
                    namespace,
                    name,
                    status,
                    body["metadata"].get("resourceVersion"),
                )
                current = self.pools.get(key)
                if current is not None and not older(updated, current):
                    self.pools[key] = updated
                    self.store.put(gpupool.KIND, updated)
                self.enqueue_members(key)
        except KubeError as err:
            if err.namespace_terminating:
                return None
            metrics.RECONCILE_ERRORS.labels(reason=f"api_{err.error_class.value.lower()}").inc()
            raise
        return None

    def _write_status(self, key: Key, body: dict[str, Any], result: Result) -> dict[str, Any] | None:
        """Events, then the status if it changed (in a worker thread); returns the updated object."""
        namespace, name = key
        for type_, reason, message in result.events:
            self.kube.event(body, reason=reason, message=message, type_=type_)
        old = body.get("status") or {}
        if comparable(old) == comparable(result.status):
            return None
        return self.kube.patch_status(
            "LLMDeployment", namespace, name, result.status, body["metadata"].get("resourceVersion")
        )


def build_registry(state: OperatorState) -> kopf.OperatorRegistry:
    """kopf's registry: the lifecycle hooks and one watch per kind, each only queueing keys
    (Watches below); the probe reports the queue's depth."""
    registry = kopf.OperatorRegistry()
    lifecycle, watches = Lifecycle(state), Watches(state)
    kopf.on.login(registry=registry)(lifecycle.login)
    kopf.on.startup(registry=registry)(lifecycle.configure)
    kopf.on.cleanup(registry=registry)(lifecycle.stop)
    kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)(watches.llmdeployment)
    kopf.on.event(GROUP, VERSION, gpupool.PLURAL, registry=registry)(watches.gpupool)
    claims = ("resource.k8s.io", "v1", "resourceclaims")
    kopf.on.event(*claims, labels=MANAGED, registry=registry)(watches.pool_claim)
    owned = (
        ("batch/v1", "jobs", "Job"),
        ("v1", "configmaps", "ConfigMap"),
        ("v1", "services", "Service"),
        ("networking.k8s.io/v1", "networkpolicies", "NetworkPolicy"),
        ("v1", "persistentvolumeclaims", "PersistentVolumeClaim"),
        # served once the Gateway API Inference Extension's CRD exists (kopf notices it appear)
        ("inference.networking.k8s.io/v1", "inferencepools", "InferencePool"),
    )
    for group_version, plural, kind in owned:
        resource = _resource(group_version, plural)
        kopf.on.event(*resource, labels=MANAGED, id=f"owned-{plural}", registry=registry)(watches.owned(kind))
    kopf.on.event("apps", "v1", "deployments", labels=MANAGED, registry=registry)(watches.deployment)
    hpas = ("autoscaling", "v2", "horizontalpodautoscalers")
    kopf.on.event(*hpas, labels=MANAGED, registry=registry)(watches.autoscaler)
    templates = ("resource.k8s.io", "v1", "resourceclaimtemplates")
    kopf.on.event(*templates, labels=MANAGED, registry=registry)(watches.claim_template)
    kopf.on.event("v1", "pods", labels=MANAGED, registry=registry)(watches.pod)
    kopf.on.event("v1", "nodes", registry=registry)(watches.node)
    kopf.on.event("resource.k8s.io", "v1", "deviceclasses", registry=registry)(watches.device_class)
    kopf.on.event("resource.k8s.io", "v1", "resourceslices", registry=registry)(watches.resource_slice)
    kopf.on.probe(id="queue", registry=registry)(lifecycle.queue_depth)
    return registry


def _resource(group_version: str, plural: str) -> tuple[str, ...]:
    return (*group_version.split("/"), plural) if "/" in group_version else (group_version, plural)


@dataclass
class Lifecycle:
    """kopf's login, startup and cleanup hooks, and the liveness probe."""

    state: OperatorState

    def login(self, **_: Any) -> kopf.ConnectionInfo:
        """kopf logs in with the same credentials as our own client (--kubeconfig, in-cluster)."""
        return connection_info(self.state.kube)

    async def configure(self, settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # events are posted by the reconciler, with our reasons
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.networking.request_timeout = 60
        settings.persistence.finalizer = "llmpack.io/kopf-finalizer"  # never added: no on.delete
        # Plans depend on what the nodes offer: know the whole cluster before the first reconcile,
        # or a restart would briefly plan against the few nodes whose watch events came first.
        while True:
            try:
                await asyncio.to_thread(self.state.seed_cluster_facts)
                break
            except KubeError as err:  # the API server may be restarting: wait for it
                logger.warning("cannot list nodes yet (%s); retrying in 2s", err)
                await asyncio.sleep(2)
        self.state.start_queue()

    async def stop(self, **_: Any) -> None:
        await self.state.shutdown()

    async def queue_depth(self, **_: Any) -> int:
        return len(self.state.queue) if self.state.queue else 0


@dataclass
class Watches:
    """What each watched event means for the work queue. Every handler only updates the caches
    (objects, cluster facts) and queues the LLMDeployments concerned; the reconcile does the rest."""

    state: OperatorState

    async def llmdeployment(self, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        state = self.state
        key = (namespace_of(body), body.metadata.name)
        # a member's spec or status (what it asks its pool for) changed, or it went: the pool
        # places again (its own status write included: that is where the request is)
        pools = {pool_name(b.get("spec") or {}) for b in (body, state.objects.get(key) or {})}
        for name in pools - {None}:
            assert name is not None
            state.enqueue_pool((key[0], name))
        if event["type"] == "DELETED":
            state.objects.pop(key, None)
            return
        known = state.objects.get(key)
        if known is not None and older(body, known):
            return  # the echo of a write whose successor the operator already holds
        state.objects[key] = copy.deepcopy(dict(body))
        if known is not None and known["metadata"].get("resourceVersion") == body.metadata.get(
            "resourceVersion"
        ):
            return  # the echo of our own status write: nothing new to reconcile
        state.enqueue(key)

    async def gpupool(self, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        """A GPUPool: its own pass, and its members' (its status is their placement)."""
        state = self.state
        key = (namespace_of(body), body.metadata.name)
        self.cache(gpupool.KIND, event, body)
        if event["type"] == "DELETED":
            state.pools.pop(key, None)
        else:
            known = state.pools.get(key)
            if known is not None and older(body, known):
                return
            state.pools[key] = copy.deepcopy(dict(body))
            if known is not None and known["metadata"].get("resourceVersion") == body.metadata.get(
                "resourceVersion"
            ):
                return  # the echo of the pool pass's own status write: its members are queued already
            state.enqueue_pool(key)
        state.enqueue_members(key)

    async def pool_claim(self, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        """A ResourceClaim of a GPUPool (members' pods reference it by name)."""
        self.cache("ResourceClaim", event, body)
        owner = next(
            (
                (namespace_of(body), ref["name"])
                for ref in body.metadata.get("ownerReferences") or []
                if ref.get("kind") == gpupool.KIND
            ),
            None,
        )
        if owner is not None and owner in self.state.pools and event["type"] in (None, "ADDED", "DELETED"):
            self.state.enqueue_pool(owner)

    def cache(self, kind: str, event: kopf.RawEvent, body: kopf.Body) -> None:
        """Keep the watch cache (store) current: every pass reads from it."""
        if event["type"] == "DELETED":
            self.state.store.remove(kind, body.metadata.namespace, body.metadata.name)
        else:
            self.state.store.put(kind, body)

    def owned(self, kind: str) -> Callable[..., Awaitable[None]]:
        """The handler of a Job, ConfigMap, Service or NetworkPolicy watch (see owned_event)."""

        async def handler(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
            await self.owned_event(kind, event, body)

        return handler

    async def owned_event(self, kind: str, event: kopf.RawEvent, body: kopf.Body) -> None:
        """A Job, ConfigMap, Service or NetworkPolicy of an LLMDeployment; in the operator's
        namespace, a cached profile that changed or went."""
        state = self.state
        self.cache(kind, event, body)
        if body.metadata.namespace == state.config.operator_namespace:
            state.reconciler.cache.forget(body.metadata.name)
        key = owner_key(body)
        if key is not None and key in state.objects:
            state.enqueue(key)

    async def claim_template(self, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        """A ResourceClaimTemplate of an LLMDeployment: one a plan no longer renders is pruned."""
        self.cache("ResourceClaimTemplate", event, body)
        key = owner_key(body)
        if key is not None and key in self.state.objects and event["type"] in (None, "ADDED", "DELETED"):
            self.state.enqueue(key)

    async def deployment(self, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        """A Deployment's status changes many times per rollout; only what the LLMDeployment's
        status or drift correction reads is worth a reconcile."""
        state = self.state
        self.cache("Deployment", event, body)
        identity = (namespace_of(body), body.metadata.name)
        if event["type"] == "DELETED":  # before the owner check: the owner is usually gone first
            state.deployment_states.pop(identity, None)
        key = owner_key(body)
        if key is None or key not in state.objects:
            return
        seen = (event["type"], *deployment_progress(body))
        if event["type"] != "DELETED":
            if state.deployment_states.get(identity) == seen:
                return
            state.deployment_states[identity] = seen
        state.enqueue(key)

    async def autoscaler(self, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        """An HPA of an LLMDeployment: its spec changing or it going is drift to undo; its status
        (rewritten every HPA period) is not news (the scale it decides arrives as an LLMDeployment
        event). The watch cache lets a pass find one the status forgot."""
        state = self.state
        self.cache("HorizontalPodAutoscaler", event, body)
        identity = (namespace_of(body), body.metadata.name)
        if event["type"] == "DELETED":
            state.autoscaler_generations.pop(identity, None)
        else:
            generation = body.metadata.get("generation")
            if state.autoscaler_generations.get(identity) == generation:
                return
            state.autoscaler_generations[identity] = generation
        key = owner_key(body)
        if key is not None and key in state.objects:
            state.enqueue(key)

    async def pod(self, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        """A pod stuck on something the user must fix (a missing Secret, an image that cannot be
        pulled, a crash loop, no room to schedule) changes neither its Job's nor its Deployment's
        status: a pass runs when the pod's problem appears, changes or clears."""
        state = self.state
        self.cache("Pod", event, body)
        identity = (namespace_of(body), body.metadata.name)
        problem = None if event["type"] == "DELETED" else pod_problem(dict(body))
        if state.pod_problems.get(identity) == problem:
            return
        if problem is None:
            state.pod_problems.pop(identity, None)
        else:
            state.pod_problems[identity] = problem
        key = state.owner_of_pod(namespace_of(body), body.metadata.labels.get(LABEL_DEPLOYMENT, ""))
        if key is not None:
            state.enqueue_soon(key)

    async def node(self, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        state = self.state
        name = body.metadata.name
        before = state.cluster.nodes.get(name)
        if event["type"] == "DELETED":
            state.cluster.nodes.pop(name, None)
        else:
            state.cluster.nodes[name] = NodeFacts.from_node(dict(body))
        if before != state.cluster.nodes.get(name):
            state.enqueue_all()  # what the cluster offers changed: plans may change

    async def device_class(self, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        if event["type"] == "DELETED":
            self.state.cluster.device_classes.discard(body.metadata.name)
        else:
            self.state.cluster.device_classes.add(body.metadata.name)
        self.state.enqueue_all()

    async def resource_slice(self, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        published = None if event["type"] == "DELETED" else dict(body)
        if self.state.cluster.publish_slice(body.metadata.name, published):
            self.state.enqueue_all()


def older(obj: Mapping[str, Any], than: Mapping[str, Any]) -> bool:
    """Whether `obj` is an older version of the same object than `than`. resourceVersions are
    opaque to clients, but the API server's are etcd revisions: where both are whole numbers they
    order the versions (client-go's informers assume no order and may hand out an older copy; the
    operator would then write a status from it and get a 409). Otherwise: not older."""
    mine, theirs = (str((o.get("metadata") or {}).get("resourceVersion", "")) for o in (obj, than))
    same_object = (obj.get("metadata") or {}).get("uid") == (than.get("metadata") or {}).get("uid")
    return same_object and mine.isdigit() and theirs.isdigit() and int(mine) < int(theirs)


def owner_key(body: kopf.Body) -> Key | None:
    """The LLMDeployment that owns `body`, by its owner reference."""
    for ref in body.metadata.get("ownerReferences") or []:
        if ref.get("kind") == "LLMDeployment" and ref.get("apiVersion", "").startswith(GROUP + "/"):
            return (namespace_of(body), ref["name"])
    return None


def deployment_progress(body: kopf.Body) -> tuple[Any, ...]:
    """What of a Deployment the LLMDeployment's status reads: generations, ready and updated
    replicas, and its conditions (a stalled rollout, ProgressDeadlineExceeded, or pods it cannot
    create, ReplicaFailure from a quota, change only the conditions: the status must say so)."""
    status = body.get("status") or {}
    conditions = sorted(
        (c.get("type"), c.get("status"), c.get("reason")) for c in status.get("conditions") or []
    )
    return (
        body.metadata.get("generation"),
        status.get("observedGeneration"),
        status.get("replicas"),  # the GPUs in use (status.gpus) follow the pods that exist
        status.get("readyReplicas"),
        status.get("updatedReplicas"),
        tuple(conditions),
    )


def namespace_of(body: kopf.Body) -> str:
    """The namespace of a namespaced object (kopf types it optional: cluster-scoped ones have none)."""
    return cast(str, body.metadata.namespace)


def connection_info(kube: KubeClient) -> kopf.ConnectionInfo:
    config = kube.api.configuration
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization")
    scheme, _, token = (header or "").rpartition(" ")
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        scheme=scheme or ("Bearer" if token else None),
        token=token or None,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
    )


def run(
    state: OperatorState,
    *,
    namespaces: list[str],
    liveness: str | None,
) -> None:
    registry = build_registry(state)
    # The in-memory profile cache is invalidated by the watch of the operator's own namespace, and
    # only that watch puts the cache's ConfigMaps into the watch cache.
    watched = not namespaces or state.config.operator_namespace in namespaces
    state.reconciler.cache.memoize = watched
    state.reconciler.cache.store = state.store if watched else None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            kopf.operator(
                registry=registry,
                clusterwide=not namespaces,
                namespaces=namespaces,
                standalone=True,  # several replicas: the Lease decides (leader.py), not kopf peering
                liveness_endpoint=liveness,
            )
        )
