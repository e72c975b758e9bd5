"""Observe: one immutable Snapshot of one LLMDeployment per pass, with I/O only.

What it reads, and from where:
- the spec, admitted once (planner.reconcile.admit_spec: parsed, refused early where no profile
  can help; the cluster's live facts read once here, as a frozen Offers value);
- the profile cache's entry for the spec's key (controller/cache.py: validated profiles kept in
  memory, the watch cache, a GET only when neither has it);
- the profiling Jobs this LLMDeployment owns, their result ConfigMaps and pods, the serving
  Deployment, its pods and the objects an earlier plan may have left: all from the watch cache
  (runtime/store.py), never a LIST per pass;
- only while a serving pod waits for the ResourceClaim its template should give it: that pod's
  FailedResourceClaimCreation events (one LIST, by field selector). The claim is created by the
  controller-manager, not by a controller whose status the operator watches, so its refusal (a
  ResourceQuota on the DRA device class: `<class>.deviceclass.resource.k8s.io/devices`) is told
  only in an event on the pod;
- only for spec.model.cache.claimName: that PersistentVolumeClaim (one GET a pass), the cluster
  admin's, which carries none of llmpack's labels.

Objects count as this LLMDeployment's only when they carry its labels and its owner reference
(its uid): an object a tenant labels to look like llmpack's is never read, nor deleted.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from llmpack.api.llmdeployment import API_VERSION, KIND, LLMDeploymentSpec
from llmpack.controller import metrics
from llmpack.controller.cache import ProfileCache
from llmpack.controller.status import deployment_problem
from llmpack.hardware.cluster import ClusterFacts
from llmpack.planner.decide import Context
from llmpack.planner.membership import member_spec, pool_cluster, pool_name
from llmpack.planner.reconcile import PRUNABLE_KINDS, admit_spec
from llmpack.planner.refusal import Refused
from llmpack.planner.snapshot import JobSeen, ServingSeen, Settings, Snapshot
from llmpack.render.plan import (
    LABEL_COMPONENT,
    LABEL_DEPLOYMENT,
    OwnerRef,
    ProfilingPlan,
    kube_name,
    label_value,
)
from llmpack.render.serving import COMPONENT_MODEL_CACHE, COMPONENT_PROFILER, COMPONENT_SERVING
from llmpack.runtime.client import Client
from llmpack.runtime.kube import quota_refusal
from llmpack.runtime.store import Store

Object = dict[str, Any]


def now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class Observer:
    def __init__(
        self, *, store: Store, cache: ProfileCache, cluster: ClusterFacts, settings: Settings, kube: Client
    ):
        self.kube = kube
        self.store = store
        self.cache = cache
        self.cluster = cluster
        self.settings = settings

    def observe(self, body: Object) -> Snapshot:
        meta = body["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
        settings = self.settings
        context = Context(
            name=name,
            namespace=namespace,
            owner=OwnerRef(api_version=API_VERSION, kind=KIND, name=name, uid=uid),
            profiler_image=settings.profiler_image,
            serving_image=settings.serving_image,
            autoscaling_metric=settings.autoscaling_metric,
            profile_scope=None if settings.share_profiles else namespace,
            auto_colocates_namespaces=settings.auto_colocates_namespaces,
            network_policy_from=settings.network_policy_from,
            endpoint_picker=settings.endpoint_picker,
            gpu_hour_prices=settings.gpu_hour_prices,
            currency=settings.currency,
        )
        raw = body.get("spec") or {}
        pool_ref = pool_name(raw)
        pool = self.store.get("GPUPool", namespace, pool_ref) if pool_ref else None
        member = member_spec(raw, pool, namespace=namespace)
        cluster = pool_cluster(self.cluster, pool)
        admission = member if isinstance(member, Refused) else admit_spec(member, cluster, context)
        snapshot = Snapshot(
            context=context,
            generation=meta.get("generation"),
            status=body.get("status") or {},
            admission=admission,
            now=now(),
            pool=pool,
        )
        if isinstance(admission, Refused):
            return snapshot  # nothing else to read: such a spec costs no API call
        cached = self.cache.lookup(admission.key)
        metrics.PROFILE_CACHE.labels(
            result="invalid" if cached.problem else ("hit" if cached.profile else "miss")
        ).inc()
        return replace(
            snapshot,
            cached=cached,
            jobs=self._jobs(namespace, name, uid),
            serving=self._serving(namespace, name, uid),
            model_caches=self._model_caches(namespace, name, uid),
            model_cache_claims=self._model_cache_claims(namespace, name, uid, deleted=False),
            model_cache_claims_deleted=self._model_cache_claims(namespace, name, uid, deleted=True),
            shared_cache_claim=self._shared_cache_claim(namespace, admission.spec),
        )

    def _shared_cache_claim(self, namespace: str, spec: LLMDeploymentSpec) -> Object | None:
        """The admin's claim of spec.model.cache.claimName: one GET a pass, only for such a spec."""
        cache = spec.model.cache
        if cache is None or cache.claim_name is None:
            return None
        return self.kube.get("PersistentVolumeClaim", namespace, cache.claim_name)

    @staticmethod
    def _cache_labels(name: str) -> dict[str, str]:
        return {LABEL_DEPLOYMENT: label_value(name), LABEL_COMPONENT: COMPONENT_MODEL_CACHE}

    def _model_cache_claims(self, namespace: str, name: str, uid: str, *, deleted: bool) -> tuple[str, ...]:
        """The cache claims, live or deleted (a deletionTimestamp: held by the pods that mount it)."""
        claims = self._owned("PersistentVolumeClaim", namespace, self._cache_labels(name), uid)
        return tuple(
            sorted(
                c["metadata"]["name"]
                for c in claims
                if bool(c["metadata"].get("deletionTimestamp")) == deleted
            )
        )

    def _model_caches(self, namespace: str, name: str, uid: str) -> tuple[JobSeen, ...]:
        labels = self._cache_labels(name)
        return tuple(
            JobSeen(
                name=job["metadata"]["name"],
                job=job,
                pods=tuple(
                    self.store.list("Pod", namespace, {**labels, "job-name": job["metadata"]["name"]})
                ),
            )
            for job in sorted(self._owned("Job", namespace, labels, uid), key=lambda j: j["metadata"]["name"])
        )

    def _owned(self, kind: str, namespace: str, labels: dict[str, str], uid: str) -> list[Object]:
        return [o for o in self.store.list(kind, namespace, labels) if _owned_by(o, uid)]

    def _jobs(self, namespace: str, name: str, uid: str) -> tuple[JobSeen, ...]:
        labels = {LABEL_DEPLOYMENT: label_value(name), LABEL_COMPONENT: COMPONENT_PROFILER}
        seen = []
        for job in self._owned("Job", namespace, labels, uid):
            job_name = job["metadata"]["name"]
            result = self.store.get("ConfigMap", namespace, ProfilingPlan.result_configmap_for(job_name))
            pods = self.store.list("Pod", namespace, {**labels, "job-name": job_name})
            seen.append(
                JobSeen(
                    name=job_name,
                    job=job,
                    result=dict((result or {}).get("data") or {}) if _owned_by(result, uid) else {},
                    pods=tuple(pods),
                )
            )
        return tuple(sorted(seen, key=lambda j: j.name))

    def _serving(self, namespace: str, name: str, uid: str) -> ServingSeen:
        labels = {LABEL_DEPLOYMENT: label_value(name), LABEL_COMPONENT: COMPONENT_SERVING}
        deployment = self.store.get("Deployment", namespace, kube_name(name))
        if deployment is not None and not _owned_by(deployment, uid):
            deployment = None
        owned = tuple(
            (kind, o["metadata"]["name"])
            for kind in PRUNABLE_KINDS
            for o in self._owned(kind, namespace, labels, uid)
        )
        pods = tuple(self.store.list("Pod", namespace, labels))
        stall = deployment_problem(deployment) if deployment is not None else None
        return ServingSeen(
            deployment=deployment,
            deployments=tuple(self._owned("Deployment", namespace, labels, uid)),
            pods=pods,
            owned=owned,
            stall=stall or self._claim_problem(namespace, pods),
        )

    def _claim_problem(self, namespace: str, pods: tuple[Object, ...]) -> tuple[str, str] | None:
        """Why the first pod still waiting for its templated ResourceClaim has none, from the
        resourceclaim controller's event on it (kubernetes pkg/controller/resourceclaim:
        FailedResourceClaimCreation, "PodResourceClaim <name>: <the API server's error>")."""
        waiting = next((p for p in pods if _claim_missing(p)), None)
        if waiting is None:
            return None
        meta = waiting["metadata"]
        events = self.kube.list(
            "Event",
            namespace,
            field_selector=f"involvedObject.uid={meta['uid']},reason=FailedResourceClaimCreation",
        )
        if not events:
            return None
        newest = max(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
        message = str(newest.get("message", ""))
        reason = "QuotaExceeded" if quota_refusal(message) else "ResourceClaimNotCreated"
        return reason, f"pod {meta['name']} cannot get its GPU claim: {message}"


def _claim_missing(pod: Object) -> bool:
    """Whether a pending pod names a ResourceClaimTemplate whose claim was not made for it yet."""
    if (pod.get("status") or {}).get("phase") not in (None, "Pending") or "uid" not in pod["metadata"]:
        return False
    templated = {
        c["name"] for c in pod["spec"].get("resourceClaims") or [] if c.get("resourceClaimTemplateName")
    }
    made = {
        s["name"]
        for s in (pod.get("status") or {}).get("resourceClaimStatuses") or []
        if s.get("resourceClaimName")
    }
    return bool(templated - made)


def _owned_by(obj: Object | None, uid: str) -> bool:
    """Whether `obj` names the LLMDeployment `uid` as its owner."""
    refs = ((obj or {}).get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)
