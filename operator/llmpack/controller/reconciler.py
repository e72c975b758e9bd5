"""One level-triggered reconcile of one LLMDeployment.

Each pass recomputes everything from the spec, the cached profile and what the cluster offers,
applies the desired objects, and writes the status once. Nothing depends on having seen an
earlier event: a pass after an operator restart, a lost watch or a hand edit does the same work.

    gather:  spec (planner.check_spec refuses what no profile can fix, before any API call), the
             profile (cache ConfigMap, or the result its profiling Job wrote), the nodes
    decide:  planner.decide(spec, profile, cluster); pure (planner/decide.py)
    act:     ProfilingDecision -> start or watch the Job;  ServingDecision -> render, apply
    report:  the status (conditions, recommendation, READY) and events
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from llmpack.api.llmdeployment import (
    API_VERSION,
    KIND,
    LLMDeploymentSpec,
    LLMDeploymentStatus,
    Phase,
    ProfileRef,
    ProfilingProgress,
)
from llmpack.api.profile import Profile
from llmpack.controller import metrics
from llmpack.controller import status as st
from llmpack.controller.cache import DATA_KEY, ProfileCache, cache_configmap_name
from llmpack.controller.client import ErrorClass, KubeClient, KubeError
from llmpack.hardware.cluster import ClusterFacts
from llmpack.planner import decide as planner
from llmpack.planner.decide import Context, ProfilingDecision, Refused
from llmpack.render import render_profiling, render_serving
from llmpack.render.plan import (
    DEFAULT_AUTOSCALING_METRIC,
    LABEL_COMPONENT,
    LABEL_DEPLOYMENT,
    OwnerRef,
    ProfilingPlan,
    ServingPlan,
    label_value,
)
from llmpack.render.serving import COMPONENT_PROFILER, COMPONENT_SERVING, serving_name, serving_selector

logger = logging.getLogger(__name__)

MANAGED_KINDS = ("Deployment", "Service", "ResourceClaimTemplate", "HorizontalPodAutoscaler")


@dataclass
class OperatorConfig:
    operator_namespace: str = "llmpack-system"
    profiler_image: str = "ghcr.io/llmpack/llmpack-profiler:0.1.0"
    serving_image: str = "ghcr.io/llmpack/llmpack-serving:0.1.0"
    autoscaling_metric: str = DEFAULT_AUTOSCALING_METRIC
    retry_seconds: float = 30.0


class Blocked(Exception):
    """The reconcile cannot go further now; the status says why and what to change."""

    def __init__(
        self,
        phase: Phase,
        condition: str,
        reason: str,
        message: str,
        *,
        value: bool | None = False,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.phase = phase
        self.condition = condition
        self.reason = reason
        self.message = message
        self.value = value
        self.retry_after = retry_after


@dataclass(frozen=True)
class JobSeen:
    """What one pass read of a profiling Job: the Job (None: none exists) and the data of its
    result ConfigMap (the profile, or the profiler's progress line)."""

    name: str
    job: dict[str, Any] | None
    data: dict[str, str]


@dataclass
class Result:
    status: dict[str, Any]
    retry_after: float | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)


class Reconciler:
    def __init__(self, kube: KubeClient, config: OperatorConfig, cluster: ClusterFacts):
        self.kube = kube
        self.config = config
        self.cluster = cluster
        self.cache = ProfileCache(kube, config.operator_namespace)
        # (namespace, name) of the HorizontalPodAutoscalers llmpack manages, kept by the watch
        self.autoscalers: set[tuple[str, str]] = set()

    # -- entry point ------------------------------------------------------------------------------

    def reconcile(self, body: dict[str, Any]) -> Result:
        meta = body["metadata"]
        generation = meta.get("generation")
        previous = body.get("status") or {}
        try:
            status = LLMDeploymentStatus.model_validate(previous)
        except ValidationError:
            status = LLMDeploymentStatus()  # a mangled status is rebuilt, not trusted
        events: list[tuple[str, str, str]] = []
        retry_after = None
        try:
            retry_after = self._reconcile(body=body, status=status, generation=generation, events=events)
            st.set_condition(
                status, st.DEGRADED, status.phase == "Degraded", _degraded_reason(status), "", generation
            )
        except Blocked as blocked:
            status.phase = blocked.phase
            status.message = blocked.message
            st.set_condition(
                status, blocked.condition, blocked.value, blocked.reason, blocked.message, generation
            )
            failing = blocked.phase in ("Failed", "Degraded")
            st.set_condition(
                status,
                st.DEGRADED,
                failing,
                blocked.reason if failing else "AsExpected",
                blocked.message if failing else "",
                generation,
            )
            if blocked.phase in ("Failed",):
                st.set_condition(status, st.PROGRESSING, False, blocked.reason, blocked.message, generation)
            retry_after = blocked.retry_after
        status.observed_generation = generation
        new = status.model_dump(by_alias=True, exclude_none=True, mode="json")
        if previous.get("phase") != new.get("phase"):
            kind = "Warning" if new["phase"] in ("Failed", "Degraded") else "Normal"
            events.append((kind, new["phase"], new.get("message", "")))
        return Result(new, retry_after, events)

    # -- the steps --------------------------------------------------------------------------------

    def _reconcile(
        self,
        *,
        body: dict[str, Any],
        status: LLMDeploymentStatus,
        generation: int | None,
        events: list[tuple[str, str, str]],
    ) -> float | None:
        """One pass; returns when to look again if no event will say (None: wait for events)."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        spec = self._parse_spec(body)
        owner = OwnerRef(api_version=API_VERSION, kind=KIND, name=name, uid=meta["uid"])
        context = Context(
            name=name,
            namespace=namespace,
            owner=owner,
            profiler_image=self.config.profiler_image,
            serving_image=self.config.serving_image,
            autoscaling_metric=self.config.autoscaling_metric,
        )
        try:
            planner.check_spec(spec, self.cluster)  # before any API call: see check_spec
            profile, seen = self._gather_profile(
                spec=spec, context=context, status=status, generation=generation, events=events
            )
            decision = planner.decide(spec, profile, self.cluster, context)
        except Refused as refused:
            raise self._blocked(refused) from refused
        if isinstance(decision, ProfilingDecision):
            raise self._profiling(spec=spec, decision=decision, status=status, seen=seen)
        plan, rec_status = decision.plan, decision.status
        events += [("Warning", reason, message) for reason, message in decision.warnings]
        previous, status.recommendation = status.recommendation, rec_status
        st.set_condition(status, st.ADVISED, True, "Advised", rec_status.explanation[:1000], generation)
        # Only a claim template or an autoscaler can be left behind (the Deployment and Service
        # keep their names): look for stale ones only where one may exist.
        prune = (
            previous is None
            or "dra" in (previous.mps_provider, plan.mps_provider)
            or (plan.autoscaling is None and self._has_autoscaler(plan, status))
        )
        applied = self._apply(plan=plan, prune=prune, status=status, generation=generation)
        status.selector = ",".join(f"{k}={v}" for k, v in serving_selector(plan).items())
        status.autoscaler = serving_name(plan) if plan.autoscaling is not None else None
        return self._readiness(status=status, plan=plan, applied=applied, generation=generation)

    def _parse_spec(self, body: dict) -> LLMDeploymentSpec:
        try:
            return LLMDeploymentSpec.model_validate(body.get("spec") or {})
        except ValidationError as err:
            raise Blocked(
                "Failed", st.PROGRESSING, "InvalidSpec", "invalid spec: " + _first_error(err)
            ) from err

    def _blocked(self, refused: Refused) -> Blocked:
        """The planner's refusal as this pass's outcome: Failed, with a look again later where the
        cluster may change."""
        return Blocked(
            "Failed",
            refused.condition,
            refused.reason,
            refused.message,
            retry_after=self.config.retry_seconds if refused.retryable else None,
        )

    # -- profile --------------------------------------------------------------------------------

    def _gather_profile(
        self,
        *,
        spec: LLMDeploymentSpec,
        context: Context,
        status: LLMDeploymentStatus,
        generation: int | None,
        events: list[tuple[str, str, str]],
    ) -> tuple[Profile | None, JobSeen]:
        """The cached profile of this spec, or the result its profiling Job published (cached
        now); None while there is neither, with what was read of the Job (the profiling step
        reports from it). Raises Blocked when the Job failed."""
        key = planner.key_of(spec, context)
        job = planner.profiling_job(spec, context)
        lookup = self.cache.get(key)
        metrics.PROFILE_CACHE.labels(
            result="invalid" if lookup.problem else ("hit" if lookup.profile else "miss")
        ).inc()
        if lookup.problem:
            events.append(("Warning", "ProfileCacheInvalid", lookup.problem + "; profiling again"))
            self.cache.evict(key)
        profile = lookup.profile
        cache_hit = profile is not None
        if status.profiling is not None or (status.profile_ref is not None and status.profile_ref.key != key):
            # A profiling pass was under way (or the key moved): Jobs of other keys, or of this key
            # once its profile is cached (a crash between caching and cleaning up), are leftovers.
            # Not on a first pass: a new LLMDeployment has none, and that pass is on the clock.
            keep = None if cache_hit else job
            self._delete_leftover_profiling(context.namespace, context.name, keep)
        seen = JobSeen(job, None, {})
        if profile is None:
            seen = self._read_job(context.namespace, job)
            profile = self._job_result(seen=seen, namespace=context.namespace, key=key, status=status)
            if profile is None:
                return None, seen
            events.append(("Normal", "Profiled", f"profile {key[:12]} measured and cached"))
        status.profile_ref = ProfileRef(
            config_map=cache_configmap_name(key),
            namespace=self.config.operator_namespace,
            key=key,
            cache_hit=cache_hit
            and (status.profile_ref is None or status.profile_ref.key != key or status.profile_ref.cache_hit),
        )
        status.profiling = None
        st.set_condition(
            status,
            st.PROFILE_READY,
            True,
            "CacheHit" if status.profile_ref.cache_hit else "Profiled",
            f"{len(profile.points)} points of {profile.model.name} on {profile.gpu.product}",
            generation,
        )
        return profile, seen

    def _read_job(self, namespace: str, job: str) -> JobSeen:
        """The profiling Job and its result ConfigMap's data, read once per pass."""
        found = self.kube.get("Job", namespace, job)
        if found is None:
            return JobSeen(job, None, {})
        result = self.kube.get("ConfigMap", namespace, ProfilingPlan.result_configmap_for(job)) or {}
        return JobSeen(job, found, result.get("data") or {})

    def _job_result(
        self, *, seen: JobSeen, namespace: str, key: str, status: LLMDeploymentStatus
    ) -> Profile | None:
        """The profile the Job published, cached and the Job cleaned up; None while it has none.
        Raises Blocked when the Job failed."""
        job, found, data = seen.name, seen.job, seen.data
        if found is None:
            return None
        conditions = self._job_conditions(found)
        result_configmap = ProfilingPlan.result_configmap_for(job)
        # The profile is the result; the Job's Complete condition only follows the pod's exit (and,
        # after an API server restart, can lag far behind). Whichever shows first is taken.
        if data.get(DATA_KEY) or "Complete" in conditions:
            profile = self._read_result(job, data)
            # Cache first, clean up second: a crash in between must not lose the measurement.
            self.cache.put(key, profile)
            self._delete_profiling_job(namespace, job, result_configmap)
            return profile
        if "Failed" in conditions:
            failed_pods = (found.get("status") or {}).get("failed", 0)
            why = self._termination_message(namespace, job) or conditions["Failed"].get("message", "")
            status.profiling = ProfilingProgress(job=job, message=why[:500], attempts=failed_pods)
            raise Blocked(
                "Failed",
                st.PROFILE_READY,
                "ProfilingFailed",
                f"profiling Job {job} failed after {failed_pods} attempt(s) "
                f"({conditions['Failed'].get('reason', 'Failed')}): {why or 'no message'}. "
                "Check the model name and token, that it fits the GPU, or raise profiling.timeoutSeconds; "
                "delete the Job to retry",
            )
        return None

    @staticmethod
    def _job_conditions(job: dict) -> dict[str, dict]:
        conditions = (job.get("status") or {}).get("conditions", [])
        return {c["type"]: c for c in conditions if c["status"] == "True"}

    def _profiling(
        self,
        *,
        spec: LLMDeploymentSpec,
        decision: ProfilingDecision,
        status: LLMDeploymentStatus,
        seen: JobSeen,
    ) -> Blocked:
        """Start the profiling Job, or say how far the running one got (from what this pass
        read of it): the pass's outcome."""
        plan = decision.plan
        job, data = seen.job, seen.data
        if job is None:
            if decision.capacity_refusal is not None:
                return self._blocked(decision.capacity_refusal)
            for obj in render_profiling(plan):
                self._apply_object(obj, st.PROFILE_READY)
            status.profiling = ProfilingProgress(job=plan.name, message="started")
            return Blocked(
                "Profiling",
                st.PROFILE_READY,
                "Profiling",
                f"profiling {spec.model.name} on {spec.gpu.product} in Job {plan.name}",
                value=None,
            )
        failed_pods = (job.get("status") or {}).get("failed", 0)
        progress = (
            data.get("progress")
            or self._pod_problem(plan.namespace, f"job-name={plan.name}")
            or ("waiting for the profiler to start")
        )
        status.profiling = ProfilingProgress(job=plan.name, message=progress[:500], attempts=failed_pods)
        return Blocked(
            "Profiling",
            st.PROFILE_READY,
            "Profiling",
            f"profiling {spec.model.name} on {spec.gpu.product}: {progress}",
            value=None,
        )

    def _pod_problem(self, namespace: str, selector: str) -> str | None:
        """Why the pods behind `selector` do not run, in the kubelet's and scheduler's words."""
        for pod in self.kube.list("Pod", namespace, label_selector=selector):
            problem = st.pod_problem(pod)
            if problem:
                return problem
        return None

    def _apply_object(
        self, obj: dict, condition: str = st.PROGRESSING, *, serving: str | None = None
    ) -> dict:
        """Server-side apply. A refusal someone must fix (an admission policy, a quota, an object
        the API rejects, a missing permission: kube.classify) ends the pass with the server's words
        in the status; anything else is raised to be retried with backoff."""
        try:
            return self.kube.apply(obj)
        except KubeError as err:
            if not err.refusal:
                raise
            raise self._refused(obj, err, condition, serving=serving) from err

    def _refused(self, obj: dict, err: KubeError, condition: str, *, serving: str | None) -> Blocked:
        """Failed, or Degraded where the pods of the current Deployment still serve. A refusal by
        a policy, quota or grant is looked at again at a slow pace: whoever fixes it does not touch
        the spec, so no event will say. An invalid object waits for the spec to change."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        error_class = err.error_class
        namespace = obj["metadata"].get("namespace", "")
        advice = {
            ErrorClass.ADMISSION_DENIED: "an admission policy or webhook of the cluster denies it: "
            "change the spec, or have the policy allow it",
            ErrorClass.QUOTA_EXCEEDED: f"a ResourceQuota of namespace {namespace} "
            "forbids it: raise the quota or ask for less",
            ErrorClass.REJECTED: "fix the spec field it names",
            ErrorClass.FORBIDDEN: "if it names the operator's ServiceAccount, the operator's RBAC lacks "
            "the permission; otherwise a policy of the namespace forbids it",
        }[error_class]
        phase: Phase = "Degraded" if serving and self._serving_now(namespace, serving) else "Failed"
        retry = None if error_class is ErrorClass.REJECTED else self.config.retry_seconds
        return Blocked(
            phase,
            condition,
            error_class.value,
            f"the API server refused the {kind} {name}: {err.message}. {advice[0].upper()}{advice[1:]}"
            + (f"; looked at again every {retry:g}s" if retry else ""),
            retry_after=retry,
        )

    def _serving_now(self, namespace: str, deployment: str) -> bool:
        """Whether the serving Deployment has ready pods (an earlier configuration that still
        serves while the new one is refused)."""
        try:
            found = self.kube.get("Deployment", namespace, deployment) or {}
        except KubeError:
            return False
        return ((found.get("status") or {}).get("readyReplicas") or 0) > 0

    def _read_result(self, job: str, data: dict[str, str]) -> Profile:
        raw = data.get(DATA_KEY)
        if not raw:
            raise Blocked(
                "Failed",
                st.PROFILE_READY,
                "ProfileMissing",
                f"profiling Job {job} completed without publishing a profile; see its logs",
            )
        try:
            return Profile.model_validate_json(raw)
        except ValidationError as err:
            raise Blocked(
                "Failed",
                st.PROFILE_READY,
                "ProfileInvalid",
                f"profiling Job {job} published an invalid profile: {_first_error(err)}",
            ) from err

    def _termination_message(self, namespace: str, job: str) -> str:
        pods = self.kube.list("Pod", namespace, label_selector=f"job-name={job}")
        pods.sort(key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True)
        for pod in pods:
            for container in (pod.get("status") or {}).get("containerStatuses") or []:
                terminated = (container.get("state") or {}).get("terminated") or {}
                if terminated.get("message"):
                    return terminated["message"].strip()
            if (pod.get("status") or {}).get("message"):
                return pod["status"]["message"].strip()
        return ""

    def _delete_profiling_job(self, namespace: str, job: str, result_configmap: str) -> None:
        # The Job last: while it exists, a later pass finds it and finishes the cleanup.
        for kind, obj_name in (
            ("ResourceClaimTemplate", job),  # only where DRA gave the GPU; absent is fine
            ("RoleBinding", job),
            ("Role", job),
            ("ServiceAccount", job),
            ("ConfigMap", result_configmap),
            ("Job", job),
        ):
            try:
                self.kube.delete(kind, namespace, obj_name)
            except KubeError as err:
                logger.warning("could not delete %s %s/%s: %s", kind, namespace, obj_name, err)

    def _delete_leftover_profiling(self, namespace: str, name: str, keep: str | None) -> None:
        """Delete this LLMDeployment's profiling Jobs (and their identities) except `keep`: those of
        an earlier spec, or one whose profile was cached just before the operator stopped."""
        selector = f"{LABEL_DEPLOYMENT}={label_value(name)},{LABEL_COMPONENT}={COMPONENT_PROFILER}"
        for job in self.kube.list("Job", namespace, label_selector=selector):
            job_name = job["metadata"]["name"]
            if job_name != keep:
                logger.info("deleting leftover profiling Job %s/%s", namespace, job_name)
                self._delete_profiling_job(namespace, job_name, ProfilingPlan.result_configmap_for(job_name))

    # -- apply and observe ------------------------------------------------------------------------

    def _apply(
        self, *, plan: ServingPlan, prune: bool, status: LLMDeploymentStatus, generation: int | None
    ) -> list[dict]:
        try:
            desired = render_serving(plan)
        except ValueError as err:  # a combination the renderer cannot express, e.g. no free ports
            raise Blocked("Failed", st.PROGRESSING, "InvalidSpec", f"cannot render: {err}") from err
        try:
            applied = [self._apply_object(obj, serving=serving_name(plan)) for obj in desired]
        except Blocked as blocked:
            # What serves is what the previous configuration left; say so, not what this one wants.
            serving = blocked.phase == "Degraded"
            if not serving:
                status.replicas, status.ready_replicas, status.ready = plan.replicas, 0, f"0/{plan.replicas}"
            st.set_condition(
                status,
                st.AVAILABLE,
                serving,
                "ReplicasReady" if serving else blocked.reason,
                "the previous configuration still serves" if serving else blocked.message,
                generation,
            )
            raise
        if prune:
            self._prune(plan, desired)
        return applied

    def _has_autoscaler(self, plan: ServingPlan, status: LLMDeploymentStatus) -> bool:
        """Whether an autoscaler of this LLMDeployment may be left: the status says one was
        rendered, or the HPA watch has seen one (the status write after rendering it may have
        been lost)."""
        return status.autoscaler is not None or (plan.namespace, serving_name(plan)) in self.autoscalers

    def _prune(self, plan: ServingPlan, desired: list[dict]) -> None:
        """Delete what an earlier plan rendered and this one does not (e.g. the claim template
        after a switch from MPS to MIG). Only kinds this plan could have left behind are listed."""
        keep = {(o["kind"], o["metadata"]["name"]) for o in desired}
        stale_kinds = [k for k in MANAGED_KINDS if k != "Service" and (k, plan.name) not in keep]
        for kind in stale_kinds:
            for obj in self.kube.list(
                kind,
                plan.namespace,
                # serving objects only: a profiling Job's claim template is the Job's to delete
                label_selector=f"{LABEL_DEPLOYMENT}={label_value(plan.name)},{LABEL_COMPONENT}={COMPONENT_SERVING}",
            ):
                if (kind, obj["metadata"]["name"]) not in keep:
                    self.kube.delete(kind, plan.namespace, obj["metadata"]["name"])

    def _replicas_serving(self, plan: ServingPlan, ready_pods: int) -> int:
        """vLLM replicas that serve. One per ready pod, except in a DRA pod, which stays ready while
        any of its replicas serves (its router sends only to those): there, the replica containers
        (native sidecars vllm-0, vllm-1 ...) that are ready, over the ready pods."""
        if plan.mps_provider != "dra" or not ready_pods:
            return ready_pods
        selector = f"{LABEL_DEPLOYMENT}={label_value(plan.name)},app.kubernetes.io/component=serving"
        serving = 0
        for pod in self.kube.list("Pod", plan.namespace, label_selector=selector):
            pod_status = pod.get("status") or {}
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in pod_status.get("conditions") or []
            )
            if not ready or pod["metadata"].get("deletionTimestamp"):
                continue
            containers = (pod_status.get("initContainerStatuses") or []) + (
                pod_status.get("containerStatuses") or []
            )
            serving += sum(1 for c in containers if c.get("name", "").startswith("vllm") and c.get("ready"))
        return serving

    def _readiness(
        self, *, status: LLMDeploymentStatus, plan: ServingPlan, applied: list[dict], generation: int | None
    ) -> float | None:
        """The status from the applied Deployment; returns when to look again while its rollout is
        unfinished (a stall changes only the Deployment's conditions, which raise no reconcile)."""
        deployment = next(o for o in applied if o["kind"] == "Deployment")
        dstatus = deployment.get("status") or {}
        # GPUs in use now (the scale subresource's status.replicas): the pods that exist, whole GPUs'
        # worth of them, as a Deployment's status.replicas counts its pods
        pods_per_gpu = 1 if plan.mps_provider == "dra" else plan.replicas_per_gpu
        status.gpus = math.ceil((dstatus.get("replicas") or 0) / pods_per_gpu)
        ready = min(plan.replicas, self._replicas_serving(plan, dstatus.get("readyReplicas") or 0))
        status.replicas = plan.replicas
        status.ready_replicas = ready
        status.ready = f"{ready}/{plan.replicas}"
        up_to_date = (
            dstatus.get("observedGeneration") == deployment["metadata"].get("generation")
            and (dstatus.get("updatedReplicas") or 0) == deployment["spec"]["replicas"]
        )
        if ready >= plan.replicas and up_to_date:
            status.phase = "Ready"
            status.message = f"{ready}/{plan.replicas} replicas serving"
            st.set_condition(status, st.AVAILABLE, True, "ReplicasReady", status.message, generation)
            st.set_condition(
                status, st.PROGRESSING, False, "Deployed", "all replicas are up to date", generation
            )
            return None
        was_serving = status.phase in ("Ready", "Degraded")
        serving = f"{ready}/{plan.replicas} replicas serving"
        problem = self._pod_problem(
            plan.namespace, f"{LABEL_DEPLOYMENT}={label_value(plan.name)},app.kubernetes.io/component=serving"
        )
        stalled = st.deployment_problem(deployment)
        if stalled is not None:
            reason, message = stalled
            message = f"{serving}; {message}" + (f"; {problem}" if problem else "")
            st.set_condition(
                status,
                st.AVAILABLE,
                ready > 0,
                "ReplicasReady" if ready else reason,
                message,
                generation,
            )
            # Pods that cannot be created with none serving is a failure the user must fix; a
            # rollout past its deadline, or a partial one, still serves what it can.
            failed = reason != "ProgressDeadlineExceeded" and ready == 0
            raise Blocked(
                "Failed" if failed else "Degraded",
                st.PROGRESSING,
                reason,
                message,
                retry_after=self.config.retry_seconds,
            )
        status.phase = "Degraded" if was_serving and ready < plan.replicas and up_to_date else "Deploying"
        status.message = serving + ("" if up_to_date else "; rolling out the new configuration")
        if problem:
            status.message += f"; {problem}"
        st.set_condition(
            status,
            st.AVAILABLE,
            ready > 0,
            "ReplicasReady" if ready else "NoReplicaReady",
            status.message,
            generation,
        )
        st.set_condition(status, st.PROGRESSING, True, "RollingOut", status.message, generation)
        return self.config.retry_seconds


def _degraded_reason(status: LLMDeploymentStatus) -> str:
    return "ReplicasUnavailable" if status.phase == "Degraded" else "AsExpected"


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    message = first.get("msg", "").removeprefix("Value error, ")
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where}: {message}{more}" if where else message + more
