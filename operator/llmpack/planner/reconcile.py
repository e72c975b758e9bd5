"""One pass over one LLMDeployment, decided: Snapshot in, Outcome out. Pure.

    admit_spec(raw spec, cluster, context) -> Admitted | Refused     (the controller, observing)
    decide(snapshot, settings) -> Outcome                            (one value; see outcome.py)

Inside `decide`, in order:
1. a refused admission (spec invalid, unknown GPU, context too long...) ends the pass Failed;
2. the profile: the cache's entry, or the result the profiling Job published (cached by the
   outcome, the Job and its identity deleted after it); a Job that failed ends the pass with its
   root cause; every profiling Job that is no longer needed goes;
3. no profile: the profiling Job to start (its objects to apply), or how far it got;
4. a profile: planner.decide_admitted, the objects that serve it (render/), the stale objects an
   earlier plan left (claim templates, autoscalers), and the status read from what the watches
   show of the Deployment and its pods (readiness counted by the sharing mode's type).

A refusal is a value: the planner's `Refused`, this module's `Stop` (where a pass ends short of
Ready, with its condition), and the API server's refusal of an apply, which the controller hands
back as `snapshot.refused` for the same pass to be decided again. An error nobody expected ends in
a Failed status that says so, never in a retry loop without a status.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import ValidationError

from llmpack.api.llmdeployment import (
    ADVISED,
    AVAILABLE,
    DEGRADED,
    MODEL_CACHED,
    PROFILE_READY,
    PROGRESSING,
    LLMDeploymentSpec,
    LLMDeploymentStatus,
    ModelCacheStatus,
    Phase,
    PoolMembershipStatus,
    ProfileRef,
    ProfilingProgress,
)
from llmpack.api.profile import Profile
from llmpack.hardware.cluster import ClusterFacts
from llmpack.planner import decide as planner
from llmpack.planner.conditions import pod_problem, set_condition, termination_message
from llmpack.planner.decide import Admitted, Context, ProfilingDecision, ServingDecision
from llmpack.planner.membership import member_plan, member_recommendation, pool_request, pool_slots
from llmpack.planner.outcome import Event, EventType, ObjectRef, Outcome
from llmpack.planner.pool_pass import gpus_worth
from llmpack.planner.refusal import Refused
from llmpack.planner.snapshot import ApplyRefusal, JobSeen, Object, Settings, Snapshot
from llmpack.render import render_profiling, render_serving
from llmpack.render.model_cache import render_model_cache
from llmpack.render.plan import (
    ANNOTATION_CLAIM_UID,
    ANNOTATION_CONFIG_HASH,
    PROFILE_DATA_KEY,
    ModelCachePlan,
    ProfilingPlan,
    ServingPlan,
    profile_cache_name,
)
from llmpack.render.serving import serving_name, serving_selector

logger = logging.getLogger(__name__)

# Kinds of serving objects a plan may leave behind when the next one renders others (a claim
# template after a switch from MPS to MIG, an autoscaler after spec.autoscaling went, a
# NetworkPolicy after the cluster admin turned them off, an InferencePool the spec no longer asks
# for). The Service keeps its name and is never stale.
PRUNABLE_KINDS = (
    "Deployment",
    "ResourceClaimTemplate",
    "HorizontalPodAutoscaler",
    "NetworkPolicy",
    "InferencePool",
)

# What a user does about each kind of refusal (the reasons are runtime/kube.py ErrorClass values).
REFUSAL_ADVICE = {
    "AdmissionDenied": "an admission policy or webhook of the cluster denies it: change the spec, or have "
    "the policy allow it",
    "QuotaExceeded": "a ResourceQuota of namespace {namespace} forbids it: raise the quota or ask for less",
    "ObjectRejected": "fix the spec field it names",
    "Forbidden": "if it names the operator's ServiceAccount, the operator's RBAC lacks the permission; "
    "otherwise a policy of the namespace forbids it",
    "KindNotServed": "install the CustomResourceDefinition of that kind (an InferencePool's: the "
    "Gateway API Inference Extension's CRDs), or remove what in the spec asks for it (serving.inferencePool)",
    "NameConflict": "two LLMDeployment names map to this object name: rename one of them (a name that "
    "is a DNS-1035 label, such as llama-3-1-8b, is used as it is; others are cleaned and hashed)",
}


@dataclass(frozen=True)
class Stop:
    """Where a pass ends short of Ready: the phase, the condition that says why (value False, or
    None for Unknown while profiling), and whether to look again after settings.retry_seconds
    (the cluster may change with no event on the LLMDeployment)."""

    phase: Phase
    condition: str
    reason: str
    message: str
    value: bool | None = False
    retry: bool = False


@dataclass
class _Draft:
    """What a pass has decided so far; `outcome()` makes the value."""

    status: LLMDeploymentStatus
    generation: int | None
    now: str
    apply: list[dict[str, Any]] = field(default_factory=list)
    delete: list[ObjectRef] = field(default_factory=list)
    cache_put: tuple[str, Profile] | None = None
    cache_evict: str | None = None
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None

    def condition(self, type_: str, value: bool | None, reason: str, message: str = "") -> None:
        set_condition(self.status, type_, value, reason, message, generation=self.generation, now=self.now)

    def event(self, type_: EventType, reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))


def admit_spec(raw: dict[str, Any], cluster: ClusterFacts, context: Context) -> Admitted | Refused:
    """The spec as stored, parsed (pydantic: the same rules as the CRD) and admitted."""
    try:
        spec = LLMDeploymentSpec.model_validate(raw)
    except ValidationError as err:
        return Refused(PROGRESSING, "InvalidSpec", "invalid spec: " + first_error(err))
    return planner.admit(spec, cluster, context)


def decide(snapshot: Snapshot, settings: Settings) -> Outcome:
    """The outcome of one pass (see the module docstring)."""
    draft = _draft(snapshot)
    try:
        stop = _pass(snapshot, settings, draft)
    except Exception as err:  # a bug: say so in the status rather than retry without one
        logger.exception("deciding %s/%s failed", snapshot.context.namespace, snapshot.context.name)
        draft = _draft(snapshot)
        stop = Stop(
            "Failed",
            PROGRESSING,
            "InternalError",
            f"llmpack could not decide on this spec ({type(err).__name__}: {err}); this is a bug in llmpack: "
            "report it with this message; a change of the spec is decided again",
        )
    return _finish(snapshot, settings, draft, stop)


def _draft(snapshot: Snapshot) -> _Draft:
    try:
        status = LLMDeploymentStatus.model_validate(snapshot.status)
    except ValidationError:
        status = LLMDeploymentStatus()  # a mangled status is rebuilt, not trusted
    return _Draft(status=status, generation=snapshot.generation, now=snapshot.now)


def _finish(snapshot: Snapshot, settings: Settings, draft: _Draft, stop: Stop | None) -> Outcome:
    status = draft.status
    if stop is None:
        degraded = status.phase == "Degraded"
        draft.condition(DEGRADED, degraded, "ReplicasUnavailable" if degraded else "AsExpected")
    else:
        status.phase, status.message = stop.phase, stop.message
        draft.condition(stop.condition, stop.value, stop.reason, stop.message)
        failing = stop.phase in ("Failed", "Degraded")
        draft.condition(
            DEGRADED, failing, stop.reason if failing else "AsExpected", stop.message if failing else ""
        )
        if stop.phase == "Failed":
            draft.condition(PROGRESSING, False, stop.reason, stop.message)
        if stop.retry:
            draft.requeue_after = settings.retry_seconds  # else as the pass left it (a shared cache's)
    status.observed_generation = draft.generation
    new = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    if snapshot.status.get("phase") != new.get("phase"):
        kind: EventType = "Warning" if new["phase"] in ("Failed", "Degraded") else "Normal"
        draft.event(kind, new["phase"], new.get("message", ""))
    return Outcome(
        status=new,
        apply=tuple(draft.apply),
        delete=tuple(draft.delete),
        cache_put=draft.cache_put,
        cache_evict=draft.cache_evict,
        events=tuple(draft.events),
        requeue_after=draft.requeue_after,
    )


def _pass(snapshot: Snapshot, settings: Settings, draft: _Draft) -> Stop | None:
    admitted = snapshot.admission
    if isinstance(admitted, Refused):
        return _stop(admitted)
    unfilled = _model_cache(snapshot, admitted, draft, settings)
    if unfilled is not None:
        return unfilled
    profile = _profile(snapshot, admitted, settings, draft)
    if isinstance(profile, Stop):
        return profile
    decision = planner.decide_admitted(admitted, profile, snapshot.context)
    if isinstance(decision, Refused):
        return _stop(decision)
    if isinstance(decision, ProfilingDecision):
        return _profiling(snapshot, admitted, decision, draft, settings)
    return _serving(snapshot, decision, draft, settings)


def _stop(refused: Refused) -> Stop:
    """The planner's refusal as where this pass ends: Failed, looked at again later where the
    cluster may change."""
    phase: Phase = "Pending" if refused.waiting else "Failed"
    return Stop(phase, refused.condition, refused.reason, refused.message, retry=refused.retryable)


# -- the model cache -----------------------------------------------------------------------------


def _model_cache(snapshot: Snapshot, admitted: Admitted, draft: _Draft, settings: Settings) -> Stop | None:
    """Fill the model cache of spec.model.cache, or check the admin's shared one, before anything
    loads the model (the profiling Job and the serving pods load it offline); None once it is
    full, or without one. Caches and Jobs of another model, revision or token are pruned; the
    operator's own claims once the new cache is full (pods still serving from an old one can
    restart meanwhile), and then only once no pod mounts them (their kubernetes.io/pvc-protection
    finalizer waits for that). A shared claim is never written nor deleted."""
    shared = snapshot.shared_cache_claim
    uid = None if shared is None else shared["metadata"].get("uid")
    plan = planner.model_cache(admitted.spec, snapshot.context, claim_uid=uid)
    namespace = snapshot.context.namespace
    for seen in snapshot.model_caches:
        if plan is None or seen.name != plan.job:
            draft.delete.append(ObjectRef("Job", namespace, seen.name))
    current = None if plan is None else next((s for s in snapshot.model_caches if s.name == plan.job), None)
    filled = current is not None and "Complete" in _job_conditions(current.job)
    for claim in snapshot.model_cache_claims:
        if plan is None or (claim != plan.name and filled):
            draft.delete.append(ObjectRef("PersistentVolumeClaim", namespace, claim))
    status = draft.status
    if plan is None:
        status.model_cache = None
        status.conditions = [c for c in status.conditions if c.type != MODEL_CACHED]
        return None
    refused = snapshot.refused
    if refused is not None and refused.name in (plan.name, plan.job):
        status.model_cache = ModelCacheStatus(
            claim=plan.name, job=plan.job, shared=plan.shared, phase="Failed", message=refused.message
        )
        return _refused(
            refused, MODEL_CACHED, serving=_serving_now(snapshot), settings=settings, namespace=namespace
        )
    if plan.shared:
        return _shared_cache(snapshot, plan, current, admitted, draft, settings)
    if plan.name in snapshot.model_cache_claims_deleted:
        return _own_claim_deleted(snapshot, plan, current, draft)
    if current is not None and plan.name not in snapshot.model_cache_claims:
        draft.delete.append(ObjectRef("Job", namespace, plan.job))  # its claim is gone: fill the new one
        current = None
    draft.apply += render_model_cache(plan)
    return _cache_job_state(plan, current, admitted, draft)


def _shared_cache(
    snapshot: Snapshot,
    plan: ModelCachePlan,
    current: JobSeen | None,
    admitted: Admitted,
    draft: _Draft,
    settings: Settings,
) -> Stop | None:
    """The admin's claim, checked by a Job before anything loads from it. The pods that mount it
    stop where they would mount what was not checked: the claim gone, going (it goes only once no
    pod mounts it) or made again (another uid). A check that fails or runs again stops nothing
    already serving: that claim passed an earlier check. No watch sees the admin's claim, so a
    pass that finds it Ready looks again after settings.retry_seconds."""
    namespace = snapshot.context.namespace
    unusable = _shared_claim_problem(plan, snapshot.shared_cache_claim, namespace)
    annotations = {} if current is None else current.job["metadata"].get("annotations") or {}
    checked = annotations.get(ANNOTATION_CLAIM_UID) or None
    if unusable is None and current is not None and checked != plan.claim_uid:
        draft.delete.append(ObjectRef("Job", namespace, plan.job))  # made again next pass, for this claim
        why = f"the shared model cache's claim {plan.name} was made again: checking it again"
        unusable = Stop("Pending", MODEL_CACHED, "Verifying", why, value=None)
    if unusable is not None:
        _stop_serving(snapshot, draft, claim=plan.name)
        phase: Literal["Waiting", "Verifying"] = "Verifying" if unusable.reason == "Verifying" else "Waiting"
        draft.status.model_cache = ModelCacheStatus(
            claim=plan.name, job=plan.job, shared=True, phase=phase, message=unusable.message[:1000]
        )
        return unusable
    draft.apply += render_model_cache(plan)
    state = _cache_job_state(plan, current, admitted, draft)
    if state is None:
        draft.requeue_after = settings.retry_seconds
    return state


def _stop_serving(snapshot: Snapshot, draft: _Draft, *, claim: str) -> None:
    """Delete the serving Deployments whose pods mount `claim` (a pool member has one per GPU);
    they come back once the cache is Ready."""
    namespace = snapshot.context.namespace
    draft.delete += [
        ObjectRef("Deployment", namespace, d["metadata"]["name"])
        for d in snapshot.serving.deployments
        if claim in _mounted_claims(d)
    ]


def _mounted_claims(deployment: Object) -> set[str]:
    volumes = (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get("volumes") or []
    return {v["persistentVolumeClaim"].get("claimName") for v in volumes if v.get("persistentVolumeClaim")}


def _shared_claim_problem(plan: ModelCachePlan, claim: Object | None, namespace: str) -> Stop | None:
    """Why the admin's claim cannot be read (not there, not bound, going), as a wait that is
    looked at again (no watch sees the admin's claim); None where it is bound."""
    where = f"the shared model cache's claim {plan.name}"
    if claim is None:
        why = (
            f"{where} does not exist in namespace {namespace}: ask the cluster admin to make it "
            "(bound to the volume holding the cache), or set spec.model.cache.size for a cache of "
            "this namespace's own"
        )
        return Stop("Pending", MODEL_CACHED, "ModelCacheClaimNotFound", why, retry=True)
    if claim["metadata"].get("deletionTimestamp"):
        why = (
            f"{where} is being deleted: the serving pods that mount it are stopped so that it goes "
            "(kubernetes.io/pvc-protection); ask the cluster admin which claim replaces it, and set "
            "spec.model.cache.claimName to that"
        )
        return Stop("Pending", MODEL_CACHED, "ModelCacheClaimDeleted", why, retry=True)
    bound = (claim.get("status") or {}).get("phase")
    if bound != "Bound":
        why = (
            f"{where} is {bound or 'Pending'}, not bound to a volume: ask the cluster admin to bind it "
            "to the volume holding the cache"
        )
        return Stop("Pending", MODEL_CACHED, "ModelCacheClaimUnbound", why, retry=True)
    return None


def _own_claim_deleted(
    snapshot: Snapshot, plan: ModelCachePlan, current: JobSeen | None, draft: _Draft
) -> Stop:
    """A user deleted the operator's claim (clearing a corrupt cache): what the Job filled is going,
    so its success says nothing any more; a new claim can be made only once the old one is gone,
    and it goes only once no pod mounts it: the serving pods are stopped (they could not restart
    on a claim being deleted either) and come back once the new cache is full."""
    if current is not None:
        draft.delete.append(ObjectRef("Job", snapshot.context.namespace, plan.job))
    _stop_serving(snapshot, draft, claim=plan.name)
    gone = (
        f"the model cache's claim {plan.name} was deleted: the serving pods that mount it are "
        "stopped so that it goes (kubernetes.io/pvc-protection); then it is filled again and they start"
    )
    draft.status.model_cache = ModelCacheStatus(claim=plan.name, job=plan.job, phase="Filling", message=gone)
    return Stop("Pending", MODEL_CACHED, "Filling", gone, value=None)


def _cache_job_state(
    plan: ModelCachePlan, current: JobSeen | None, admitted: Admitted, draft: _Draft
) -> Stop | None:
    """The fill (or check) Job's state as the cache's: None once it succeeded."""
    status, model = draft.status, admitted.spec.model.name
    done = _job_conditions(current.job) if current is not None else {}
    which = "the shared model cache" if plan.shared else "the model cache"
    if "Complete" in done:
        verb = "verified" if plan.shared else "filled"
        status.model_cache = ModelCacheStatus(
            claim=plan.name, job=plan.job, shared=plan.shared, phase="Ready", message=verb
        )
        draft.condition(MODEL_CACHED, True, verb.capitalize(), f"{model} is in {plan.name}")
        return None
    if "Failed" in done:
        assert current is not None
        why = termination_message(list(current.pods)) or done["Failed"].get("message") or "no reason given"
        doing = "checking" if plan.shared else "filling"
        message = (
            f"{doing} {which} {plan.name} failed (Job {plan.job}): {why}. Fix what it names, "
            f"then delete the Job to {'check' if plan.shared else 'fill'} it again with the same spec"
        )
        status.model_cache = ModelCacheStatus(
            claim=plan.name, job=plan.job, shared=plan.shared, phase="Failed", message=why[:1000]
        )
        return Stop("Failed", MODEL_CACHED, "ModelCacheFailed", message)
    waiting = next((p for p in map(pod_problem, current.pods) if p), None) if current else None
    if plan.shared:
        doing = waiting or f"reading {model} from {plan.name}"
        phase: Literal["Filling", "Verifying"] = "Verifying"
    else:
        doing = waiting or f"downloading {model} into {plan.name}"
        phase = "Filling"
    status.model_cache = ModelCacheStatus(
        claim=plan.name, job=plan.job, shared=plan.shared, phase=phase, message=doing[:1000]
    )
    verb = "checking" if plan.shared else "filling"
    return Stop("Pending", MODEL_CACHED, phase, f"{verb} {which}: {doing}", value=None)


# -- the profile and its Job ---------------------------------------------------------------------


def _profile(
    snapshot: Snapshot, admitted: Admitted, settings: Settings, draft: _Draft
) -> Profile | Stop | None:
    """The cached profile of this spec, or the one its profiling Job published (cached by the
    outcome); None while there is neither. Profiling Jobs no longer needed are deleted."""
    key, cached = admitted.key, snapshot.cached
    if cached.problem:
        draft.event("Warning", "ProfileCacheInvalid", cached.problem + "; profiling again")
        draft.cache_evict = key
    profile = cached.profile
    cache_hit = profile is not None
    current = next((job for job in snapshot.jobs if job.name == admitted.job), None)
    # Jobs of other keys (the spec changed), and this key's once its profile is cached (a crash
    # between caching and cleaning up), are leftovers.
    for job in snapshot.jobs:
        if job.name != admitted.job or cache_hit:
            _delete_profiling(draft, snapshot.context.namespace, job.name)
    if profile is None and current is not None:
        published = _job_result(current, admitted, draft)
        if isinstance(published, Stop):
            return published
        if published is not None:
            profile = published
            draft.cache_put = (key, published)  # cached first, cleaned up second
            _delete_profiling(draft, snapshot.context.namespace, current.name)
            draft.event("Normal", "Profiled", f"profile {key[:12]} measured and cached")
    if profile is None:
        return None
    status = draft.status
    previous = status.profile_ref
    status.profile_ref = ProfileRef(
        config_map=profile_cache_name(key),
        namespace=settings.operator_namespace,
        key=key,
        cache_hit=cache_hit and (previous is None or previous.key != key or previous.cache_hit),
    )
    status.profiling = None
    draft.condition(
        PROFILE_READY,
        True,
        "CacheHit" if status.profile_ref.cache_hit else "Profiled",
        f"{len(profile.points)} points of {profile.model.name} on {profile.gpu.product}",
    )
    return profile


def _job_conditions(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    conditions = (job.get("status") or {}).get("conditions") or []
    return {c["type"]: c for c in conditions if c.get("status") == "True"}


def _job_result(seen: JobSeen, admitted: Admitted, draft: _Draft) -> Profile | Stop | None:
    """The profile the Job published once it succeeded; a Stop when it failed, published none, or
    published one that is not what it was asked to measure; None while it runs.

    The result ConfigMap lies in the tenant's namespace, where anyone with `edit` can write it: it
    is read only after the Job succeeded, and taken only if it claims the model, GPU, workload and
    key this Job measures (a profile claiming to be another's is refused, with what it claims). A
    forged result with the right claims still decides for its own namespace only: profile keys are
    per namespace unless the cluster admin shares them (Settings.share_profiles)."""
    conditions = _job_conditions(seen.job)
    succeeded = "Complete" in conditions or ((seen.job.get("status") or {}).get("succeeded") or 0) > 0
    raw = seen.result.get(PROFILE_DATA_KEY)
    if succeeded:
        if not raw:
            return Stop(
                "Failed",
                PROFILE_READY,
                "ProfileMissing",
                f"profiling Job {seen.name} completed without publishing a profile; see its logs",
            )
        try:
            profile = Profile.model_validate_json(raw)
        except ValidationError as err:
            return Stop(
                "Failed",
                PROFILE_READY,
                "ProfileInvalid",
                f"profiling Job {seen.name} published an invalid profile: {first_error(err)}",
            )
        mismatch = claims_mismatch(profile, admitted)
        if mismatch:
            return Stop(
                "Failed",
                PROFILE_READY,
                "ProfileMismatch",
                f"the result of profiling Job {seen.name} ({ProfilingPlan.result_configmap_for(seen.name)}) "
                f"is not the measurement it was asked for: {mismatch}; it was not used. Something other "
                "than the profiler wrote it; delete the Job to measure again",
            )
        return profile
    if "Failed" in conditions:
        failed = conditions["Failed"]
        attempts = (seen.job.get("status") or {}).get("failed", 0)
        why = termination_message(list(seen.pods)) or failed.get("message", "")
        draft.status.profiling = ProfilingProgress(job=seen.name, message=why[:500], attempts=attempts)
        return Stop(
            "Failed",
            PROFILE_READY,
            "ProfilingFailed",
            f"profiling Job {seen.name} failed after {attempts} attempt(s) "
            f"({failed.get('reason', 'Failed')}): {why or 'no message'}. "
            "Check the model name and token, that it fits the GPU, or raise profiling.timeoutSeconds; "
            "delete the Job to retry",
        )
    return None


def claims_mismatch(profile: Profile, admitted: Admitted) -> str | None:
    """What a published profile claims that differs from what its Job measures (None: nothing)."""
    spec = admitted.spec
    claims = [
        ("key", profile.key, admitted.key),
        ("model", profile.model.name, spec.model.name),
        ("GPU", profile.gpu.product, spec.gpu.product),
        ("prompt tokens", profile.workload.prompt_tokens, spec.workload.prompt_tokens),
        ("output tokens", profile.workload.output_tokens, spec.workload.output_tokens),
    ]
    wrong = [
        f"{what} {claimed!r} (measured: {wanted!r})" for what, claimed, wanted in claims if claimed != wanted
    ]
    return ", ".join(wrong) or None


def _delete_profiling(draft: _Draft, namespace: str, job: str) -> None:
    """A profiling Job and the identity it published with; the Job last: while it exists, a later
    pass finds it and finishes the cleanup."""
    for kind, name in (
        ("ResourceClaimTemplate", job),  # only where DRA gave the GPU; absent is fine
        ("RoleBinding", job),
        ("Role", job),
        ("ServiceAccount", job),
        ("ConfigMap", ProfilingPlan.result_configmap_for(job)),
        ("Job", job),
    ):
        ref = ObjectRef(kind, namespace, name)
        if ref not in draft.delete:
            draft.delete.append(ref)


def _profiling(
    snapshot: Snapshot, admitted: Admitted, decision: ProfilingDecision, draft: _Draft, settings: Settings
) -> Stop:
    """Start the profiling Job, or say how far the running one got."""
    plan, spec = decision.plan, admitted.spec
    current = next((job for job in snapshot.jobs if job.name == plan.name), None)
    if current is None:
        if decision.capacity_refusal is not None:
            return _stop(decision.capacity_refusal)
        if snapshot.refused is not None:
            return _refused(
                snapshot.refused, PROFILE_READY, serving=False, settings=settings, namespace=plan.namespace
            )
        draft.apply += render_profiling(plan)
        draft.status.profiling = ProfilingProgress(job=plan.name, message="started")
        return Stop(
            "Profiling",
            PROFILE_READY,
            "Profiling",
            f"profiling {spec.model.name} on {spec.gpu.product} in Job {plan.name}",
            value=None,
        )
    attempts = (current.job.get("status") or {}).get("failed", 0)
    progress = (
        current.result.get("progress")
        or next((p for p in map(pod_problem, current.pods) if p), None)
        or "waiting for the profiler to start"
    )
    draft.status.profiling = ProfilingProgress(job=plan.name, message=progress[:500], attempts=attempts)
    return Stop(
        "Profiling",
        PROFILE_READY,
        "Profiling",
        f"profiling {spec.model.name} on {spec.gpu.product}: {progress}",
        value=None,
    )


# -- serving -------------------------------------------------------------------------------------


def _serving(snapshot: Snapshot, decision: ServingDecision, draft: _Draft, settings: Settings) -> Stop | None:
    plan, status = decision.plan, draft.status
    for reason, message in decision.warnings:
        draft.event("Warning", reason, message)
    status.recommendation = decision.status
    draft.condition(ADVISED, True, "Advised", decision.explanation[:1000])
    member = _pool_member(snapshot, decision, draft)
    if isinstance(member, Stop):
        return member
    if member is not None:
        plan = member.plan
    try:
        desired = render_serving(plan)
    except ValueError as err:  # a combination the renderer cannot express, e.g. no free ports
        return Stop("Failed", PROGRESSING, "InvalidSpec", f"cannot render: {err}")
    if snapshot.refused is not None:
        return _serving_refused(snapshot, snapshot.refused, plan, draft, settings)
    draft.apply += desired
    keep = {(o["kind"], o["metadata"]["name"]) for o in desired}
    for kind, name in snapshot.serving.owned:
        if kind in PRUNABLE_KINDS and (kind, name) not in keep:
            draft.delete.append(ObjectRef(kind, plan.namespace, name))
    status.selector = ",".join(f"{k}={v}" for k, v in serving_selector(plan).items())
    status.autoscaler = serving_name(plan) if plan.autoscaling is not None else None
    if member is not None and member.unplaced is not None:
        return member.unplaced  # its old pods pruned above: the pool gave it nothing
    if plan.pool_slots is not None:
        return _pool_readiness(snapshot, plan, desired, draft, settings, decision.chosen.replicas_per_gpu)
    deployment = next(o for o in desired if o["kind"] == "Deployment")
    return _readiness(snapshot, plan, deployment, draft, settings)


@dataclass(frozen=True)
class _Member:
    """A GPUPool member's plan on the slots its pool gives it, and where the pass ends when it
    has none (after its old pods are pruned)."""

    plan: ServingPlan
    unplaced: Stop | None = None


def _pool_member(snapshot: Snapshot, decision: ServingDecision, draft: _Draft) -> _Member | Stop | None:
    """A GPUPool member: its request in its status (the pool's pass reads it), its cost share,
    and its plan on the slots the pool's status gives it. None when not a member; a Stop (nothing
    applied, nothing pruned: the old pods serve) while the pool has yet to place a changed replica."""
    admitted = snapshot.admission
    ref = admitted.spec.gpu_pool_ref if isinstance(admitted, Admitted) else None
    if ref is None:
        draft.status.pool = None  # left its pool (or never had one)
        return None
    name = snapshot.context.name
    request = pool_request(decision)
    placement = pool_slots(name, snapshot.pool, revision=request.revision)
    if draft.status.recommendation is not None:
        draft.status.recommendation = member_recommendation(draft.status.recommendation, name, snapshot.pool)
    placed = sum(s.replicas for s in placement.slots)
    draft.status.pool = PoolMembershipStatus(
        name=ref.name,
        request=request,
        gpus=placement.shares,
        placed=placement.message or f"{placed} replicas on {len(placement.slots)} GPUs of {ref.name}",
    )
    plan = member_plan(decision.plan, placement)
    if not plan.sharing.uses_claim_template:
        # the device plugin or MIG hands out the shares: the pods ask for theirs, the pool plans
        if not placement.message:
            draft.status.pool.placed = (
                f"planned on {len(placement.shares)} GPUs of {ref.name}; the scheduler places the pods"
            )
        return _Member(plan)
    if placement.state == "hold":
        return Stop(
            "Deploying",
            PROGRESSING,
            "WaitingForGPUPool",
            f"the GPUPool {ref.name} has yet to place the changed replicas; the current pods serve meanwhile",
            retry=True,
        )
    if placement.state == "none":
        waiting = not placement.short
        unplaced = Stop(
            "Pending" if waiting else "Failed",
            AVAILABLE,
            "WaitingForGPUPool" if waiting else "GPUPoolFull",
            f"the GPUPool {ref.name} has not placed its {request.replicas} replicas yet"
            if waiting
            else f"the GPUPool {ref.name} placed no replica: {placement.message}",
            retry=waiting,
        )
        return _Member(plan, unplaced)
    return _Member(plan)


def _pool_readiness(
    snapshot: Snapshot,
    plan: ServingPlan,
    desired: list[dict[str, Any]],
    draft: _Draft,
    settings: Settings,
    replicas_per_gpu: int,
) -> Stop | None:
    """_readiness over a member's Deployments (one per pool GPU) taken as one: their pods, their
    statuses summed, up to date only when every one is."""
    wanted = [o for o in desired if o["kind"] == "Deployment"]
    seen = {d["metadata"]["name"]: d for d in snapshot.serving.deployments}
    hashes = "/".join(str(_config_hash(d)) for d in wanted)
    total = {"replicas": 0, "readyReplicas": 0, "updatedReplicas": 0}
    current = True
    for want in wanted:
        have = seen.get(want["metadata"]["name"])
        if have is None or not _matches(have, want):
            current = False
            continue
        dstatus = have.get("status") or {}
        current &= dstatus.get("observedGeneration") == have["metadata"].get("generation")
        for key in total:
            total[key] += int(dstatus.get(key) or 0)
    annotations = {ANNOTATION_CONFIG_HASH: hashes}
    template = {"metadata": {"annotations": annotations}}
    merged_desired = {"spec": {"replicas": len(wanted), "template": template}}
    merged_seen = {
        "metadata": {"generation": 1},
        "spec": {"replicas": len(wanted) if current else -1, "template": template},
        "status": {**total, "observedGeneration": 1 if current else 0},
    }
    stop = _readiness(
        replace(snapshot, serving=replace(snapshot.serving, deployment=merged_seen)),
        plan.model_copy(update={"replicas_per_gpu": max(s.replicas for s in plan.pool_slots or ())}),
        merged_desired,
        draft,
        settings,
    )
    draft.status.gpus = gpus_worth(draft.status.ready_replicas or 0, replicas_per_gpu)
    pool = draft.status.pool
    if stop is None and pool is not None and pool.request:
        placed = sum(g.replicas for g in pool.gpus)
        if placed < pool.request.replicas:  # the pool placed some of them only: it says why
            draft.status.phase = "Degraded" if draft.status.phase == "Ready" else draft.status.phase
            draft.status.message += f"; the GPUPool {pool.name}: {pool.placed}"
    return stop


def _serving_now(snapshot: Snapshot) -> bool:
    """Whether the Deployment the watch sees has ready pods (an earlier configuration that still
    serves while the new one is refused)."""
    deployment = snapshot.serving.deployment or {}
    return ((deployment.get("status") or {}).get("readyReplicas") or 0) > 0


def _serving_refused(
    snapshot: Snapshot, refused: ApplyRefusal, plan: ServingPlan, draft: _Draft, settings: Settings
) -> Stop:
    """What serves is what the previous configuration left; say so, not what this one wants."""
    serving = _serving_now(snapshot)
    stop = _refused(refused, PROGRESSING, serving=serving, settings=settings, namespace=plan.namespace)
    status = draft.status
    if not serving:
        status.replicas, status.ready_replicas, status.ready = plan.replicas, 0, f"0/{plan.replicas}"
    draft.condition(
        AVAILABLE,
        serving,
        "ReplicasReady" if serving else stop.reason,
        "the previous configuration still serves" if serving else stop.message,
    )
    return stop


def _refused(
    refused: ApplyRefusal, condition: str, *, serving: bool, settings: Settings, namespace: str
) -> Stop:
    """Failed, or Degraded where the pods of the current Deployment still serve. A refusal by a
    policy, quota or grant is looked at again at a slow pace: whoever fixes it does not touch the
    spec, so no event will say. An invalid object waits for the spec to change."""
    advice = REFUSAL_ADVICE.get(refused.reason, "see the API server's message").format(namespace=namespace)
    return Stop(
        "Degraded" if serving else "Failed",
        condition,
        refused.reason,
        f"the API server refused the {refused.kind} {refused.name}: {refused.message}. "
        f"{advice[0].upper()}{advice[1:]}"
        + (f"; looked at again every {settings.retry_seconds:g}s" if refused.retry else ""),
        retry=refused.retry,
    )


def _matches(observed: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    """Whether the Deployment the watch sees runs the pods and the scale `desired` asks for."""
    if observed is None:
        return False
    same_pods = _config_hash(observed) == _config_hash(desired)
    return same_pods and bool(observed["spec"].get("replicas") == desired["spec"]["replicas"])


def _config_hash(deployment: dict[str, Any]) -> str | None:
    template = deployment["spec"].get("template") or {}
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    found: str | None = annotations.get(ANNOTATION_CONFIG_HASH)
    return found


def _readiness(
    snapshot: Snapshot, plan: ServingPlan, desired: dict[str, Any], draft: _Draft, settings: Settings
) -> Stop | None:
    """The status from the Deployment and pods the watches see; looks again while the rollout is
    unfinished (a stall changes only the Deployment's conditions)."""
    status, observed = draft.status, snapshot.serving.deployment
    dstatus = (observed or {}).get("status") or {}
    sharing = plan.sharing
    # GPUs in use now (the scale subresource's status.replicas): the pods that exist, whole GPUs'
    # worth of them, as a Deployment's status.replicas counts its pods
    pods = dstatus.get("replicas") or 0
    status.gpus = math.ceil(pods * plan.gpus_per_replica / sharing.pods_per_gpu(plan.replicas_per_gpu))
    ready = min(
        plan.replicas, sharing.replicas_serving(dstatus.get("readyReplicas") or 0, snapshot.serving.pods)
    )
    status.replicas, status.ready_replicas, status.ready = plan.replicas, ready, f"{ready}/{plan.replicas}"
    matches = _matches(observed, desired)
    up_to_date = (
        matches
        and observed is not None
        and dstatus.get("observedGeneration") == observed["metadata"].get("generation")
        and (dstatus.get("updatedReplicas") or 0) == desired["spec"]["replicas"]
    )
    if ready >= plan.replicas and up_to_date:
        status.phase = "Ready"
        status.message = f"{ready}/{plan.replicas} replicas serving"
        draft.condition(AVAILABLE, True, "ReplicasReady", status.message)
        draft.condition(PROGRESSING, False, "Deployed", "all replicas are up to date")
        return None
    was_serving = status.phase in ("Ready", "Degraded")
    serving = f"{ready}/{plan.replicas} replicas serving"
    problem = next((p for p in map(pod_problem, snapshot.serving.pods) if p), None)
    # the Deployment's conditions speak of its own spec: only when it is the one desired
    stalled = snapshot.serving.stall if matches else None
    if stalled is not None:
        reason, message = stalled
        message = f"{serving}; {message}" + (f"; {problem}" if problem else "")
        draft.condition(AVAILABLE, ready > 0, "ReplicasReady" if ready else reason, message)
        # Pods that cannot be created with none serving is a failure the user must fix; a
        # rollout past its deadline, or a partial one, still serves what it can.
        failed = reason != "ProgressDeadlineExceeded" and ready == 0
        return Stop("Failed" if failed else "Degraded", PROGRESSING, reason, message, retry=True)
    status.phase = "Degraded" if was_serving and ready < plan.replicas and up_to_date else "Deploying"
    status.message = serving + ("" if up_to_date else "; rolling out the new configuration")
    if problem:
        status.message += f"; {problem}"
    draft.condition(AVAILABLE, ready > 0, "ReplicasReady" if ready else "NoReplicaReady", status.message)
    draft.condition(PROGRESSING, True, "RollingOut", status.message)
    draft.requeue_after = settings.retry_seconds
    return None


def first_error(err: ValidationError) -> str:
    """pydantic's first error as `field.path: message (and N more)`."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    message = first.get("msg", "").removeprefix("Value error, ")
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where}: {message}{more}" if where else message + more
