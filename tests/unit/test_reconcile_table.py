"""The operator's decision as a table: one Snapshot in (what a pass observed), one Outcome out (what
it applies and deletes, what it caches, the status it writes, when it looks again). No API server,
real or fake: planner/reconcile.py `decide` is pure, and every row says what a user would see."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from test_badinput_pure import BASE_SPEC, cluster_offering_everything, merged, simulated_profile

from llmpack.api.llmdeployment import LLMDeploymentSpec
from llmpack.hardware.cluster import ClusterFacts
from llmpack.planner.decide import Admitted, Context
from llmpack.planner.outcome import ObjectRef, Outcome
from llmpack.planner.reconcile import admit_spec, decide
from llmpack.planner.snapshot import (
    ApplyRefusal,
    CachedProfile,
    JobSeen,
    ServingSeen,
    Settings,
    Snapshot,
)
from llmpack.render.plan import ANNOTATION_CONFIG_HASH, PROFILE_DATA_KEY, OwnerRef

SETTINGS = Settings()
# what a profiling Job comes with: its result ConfigMap, its identity (a ServiceAccount that may
# write only that ConfigMap), the Job
PROFILING_OBJECTS = ["ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Job"]
NOW = "2026-12-04T12:00:00Z"
NAMESPACE, NAME, UID = "team-a", "chat", "uid-chat"
DRA = {"sharing": {"mode": "mps", "mpsProvider": "dra"}}
EXCLUSIVE = {"sharing": {"mode": "exclusive"}, "gpu": {"count": 2}}


def context() -> Context:
    return Context(
        name=NAME,
        namespace=NAMESPACE,
        owner=OwnerRef(api_version="llmpack.io/v1alpha1", kind="LLMDeployment", name=NAME, uid=UID),
        profiler_image=SETTINGS.profiler_image,
        serving_image=SETTINGS.serving_image,
    )


def snapshot(
    spec: dict[str, Any],
    *,
    status: dict[str, Any] | None = None,
    cluster: ClusterFacts | None = None,
    **observed: Any,
) -> Snapshot:
    admission = admit_spec(spec, cluster or cluster_offering_everything(), context())
    return Snapshot(
        context=context(),
        generation=1,
        status=status or {},
        admission=admission,
        now=NOW,
        **observed,
    )


def profile_of(spec: dict[str, Any]) -> CachedProfile:
    return CachedProfile(simulated_profile(LLMDeploymentSpec.model_validate(spec)))


def published(spec: dict[str, Any]) -> dict[str, str]:
    """A result ConfigMap's data as the profiler writes it for BASE_SPEC's Job (its key)."""
    profile = profile_of(spec).profile
    assert profile is not None
    return {PROFILE_DATA_KEY: profile.model_copy(update={"key": admitted(BASE_SPEC).key}).model_dump_json()}


def job(name: str, *, conditions: list[dict[str, Any]] | None = None, failed: int = 0) -> dict[str, Any]:
    return {
        "kind": "Job",
        "metadata": {"name": name, "namespace": NAMESPACE, "ownerReferences": [{"uid": UID}]},
        "status": {"conditions": conditions or [], "failed": failed},
    }


def served(spec: dict[str, Any], **deployment_status: Any) -> tuple[Outcome, dict[str, Any]]:
    """The first serving pass of `spec`, and its Deployment as the watch would then show it, with
    `deployment_status` as the Deployment controller wrote it."""
    first = decide(snapshot(spec, cached=profile_of(spec)), SETTINGS)
    deployment = copy.deepcopy(next(o for o in first.apply if o["kind"] == "Deployment"))
    deployment["metadata"]["generation"] = 1
    deployment["status"] = {"observedGeneration": 1, **deployment_status}
    return first, deployment


def kinds(outcome: Outcome) -> list[str]:
    return [o["kind"] for o in outcome.apply]


def condition(outcome: Outcome, type_: str) -> dict[str, Any]:
    return {c["type"]: c for c in outcome.status["conditions"]}[type_]


def admitted(spec: dict[str, Any]) -> Admitted:
    found = snapshot(spec).admission
    assert isinstance(found, Admitted)
    return found


@dataclass
class Row:
    situation: str
    snapshot: Snapshot
    phase: str
    reason: str | None = None  # the reason of the condition that says why (None: Ready)
    applies: list[str] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)  # kinds
    requeue: bool = False
    message: str = ""  # a part of status.message
    cached: bool = False  # the outcome files a profile in the cache


def rows() -> list[Row]:
    spec, dra = BASE_SPEC, merged(BASE_SPEC, DRA)
    job_name = admitted(spec).job
    table = [
        Row(
            "new spec: no profile, no Job -> the Job, its identity and result ConfigMap are applied",
            snapshot(spec),
            "Profiling",
            "Profiling",
            applies=PROFILING_OBJECTS,
            message="in Job",
        ),
        Row(
            "Job running: its progress line, nothing applied",
            snapshot(spec, jobs=(JobSeen(job_name, job(job_name), {"progress": "batch 64 of 128"}),)),
            "Profiling",
            "Profiling",
            message="batch 64 of 128",
        ),
        Row(
            "Job failed: the root cause its pod wrote, Failed, no retry loop",
            snapshot(
                spec,
                jobs=(
                    JobSeen(
                        job_name,
                        job(job_name, conditions=[_true("Failed", "BackoffLimitExceeded")], failed=2),
                        pods=(_terminated("ValueError: max_num_batched_tokens (1) must be ..."),),
                    ),
                ),
            ),
            "Failed",
            "ProfilingFailed",
            message="ValueError: max_num_batched_tokens (1)",
        ),
        Row(
            "profile published, Job succeeded: cached, the Job and its identity deleted, serving applied",
            snapshot(
                spec,
                jobs=(JobSeen(job_name, job(job_name, conditions=[_true("Complete")]), published(spec)),),
            ),
            "Deploying",
            applies=["ResourceClaimTemplate", "Deployment", "Service"],
            deletes=["ResourceClaimTemplate", "RoleBinding", "Role", "ServiceAccount", "ConfigMap", "Job"],
            requeue=True,
            cached=True,
        ),
        Row(
            "profile published while the Job runs: not taken yet (the tenant can write it)",
            snapshot(spec, jobs=(JobSeen(job_name, job(job_name), published(spec)),)),
            "Profiling",
            "Profiling",
        ),
        Row(
            "profile published claiming another model and GPU: refused, nothing cached",
            snapshot(
                spec,
                jobs=(
                    JobSeen(
                        job_name,
                        job(job_name, conditions=[_true("Complete")]),
                        published(merged(spec, {"model": {"name": "facebook/opt-2.7b"}})),
                    ),
                ),
            ),
            "Failed",
            "ProfileMismatch",
            message="model 'facebook/opt-2.7b'",
        ),
        Row(
            "profile published that does not validate: Failed, nothing cached",
            snapshot(
                spec,
                jobs=(
                    JobSeen(
                        job_name, job(job_name, conditions=[_true("Complete")]), {PROFILE_DATA_KEY: "{}"}
                    ),
                ),
            ),
            "Failed",
            "ProfileInvalid",
        ),
        Row(
            "Job complete without a profile: Failed, see its logs",
            snapshot(spec, jobs=(JobSeen(job_name, job(job_name, conditions=[_true("Complete")])),)),
            "Failed",
            "ProfileMissing",
        ),
        Row(
            "cached profile: serving objects applied, the rollout looked at again",
            snapshot(spec, cached=profile_of(spec)),
            "Deploying",
            applies=["ResourceClaimTemplate", "Deployment", "Service"],
            requeue=True,
        ),
        Row(
            "cached profile, a Job of an earlier spec still there: deleted with its identity",
            snapshot(
                spec, cached=profile_of(spec), jobs=(JobSeen("chat-profile-0ld", job("chat-profile-0ld")),)
            ),
            "Deploying",
            applies=["ResourceClaimTemplate", "Deployment", "Service"],
            deletes=["ResourceClaimTemplate", "RoleBinding", "Role", "ServiceAccount", "ConfigMap", "Job"],
            requeue=True,
        ),
        Row(
            "cache entry that does not validate: evicted, profiled again",
            snapshot(spec, cached=CachedProfile(None, "cached profile x is invalid")),
            "Profiling",
            "Profiling",
            applies=PROFILING_OBJECTS,
        ),
        Row(
            "spec pydantic refuses: Failed InvalidSpec, nothing read or applied",
            snapshot({"model": {"name": "m"}, "workload": {"promptTokens": -1}}),
            "Failed",
            "InvalidSpec",
            message="workload.promptTokens",
        ),
        Row(
            "unknown GPU: Failed before anything is read",
            snapshot(merged(spec, {"gpu": {"product": "NVIDIA-RTX-9090"}})),
            "Failed",
            "UnknownGPU",
        ),
        Row(
            "a mode the cluster lacks: Failed, looked at again (nodes may come)",
            snapshot(
                merged(spec, {"sharing": {"mode": "mig"}}),
                cached=profile_of(merged(spec, {"sharing": {"mode": "mig"}})),
                cluster=whole_gpus_only(),
            ),
            "Failed",
            "NoMatchingNodes",
            requeue=True,
        ),
    ]
    first, deployment = served(dra, replicas=1, readyReplicas=1, updatedReplicas=1)
    ready_pod = _dra_pod(ready_containers=2)
    table += [
        Row(
            "serving: the Deployment up to date and both replicas of its DRA pod ready -> Ready",
            snapshot(
                dra,
                cached=profile_of(dra),
                status=first.status,
                serving=ServingSeen(deployment=deployment, pods=(ready_pod,)),
            ),
            "Ready",
            applies=["ResourceClaimTemplate", "Deployment", "Service"],
        ),
        Row(
            "DRA pod ready with one of two replicas serving: not Ready (the router serves one)",
            snapshot(
                dra,
                cached=profile_of(dra),
                status=first.status,
                serving=ServingSeen(deployment=deployment, pods=(_dra_pod(ready_containers=1),)),
            ),
            "Deploying",
            applies=["ResourceClaimTemplate", "Deployment", "Service"],
            requeue=True,
            message="1/2 replicas serving",
        ),
        Row(
            "Deployment stalled past its progress deadline: Degraded, looked at again",
            snapshot(
                dra,
                cached=profile_of(dra),
                status=first.status,
                serving=ServingSeen(
                    deployment=deployment,
                    stall=("ProgressDeadlineExceeded", "the Deployment chat made no progress"),
                ),
            ),
            "Degraded",
            "ProgressDeadlineExceeded",
            applies=["ResourceClaimTemplate", "Deployment", "Service"],
            requeue=True,
        ),
        Row(
            "quota refuses the Deployment, nothing serving: Failed with the server's words, retried",
            replace(
                snapshot(dra, cached=profile_of(dra)),
                refused=ApplyRefusal(
                    "Deployment", "chat", "QuotaExceeded", "exceeded quota: gpus", retry=True
                ),
            ),
            "Failed",
            "QuotaExceeded",
            requeue=True,
            message="exceeded quota: gpus",
        ),
        Row(
            "admission policy refuses a new configuration while the old one serves: Degraded",
            replace(
                snapshot(
                    dra,
                    cached=profile_of(dra),
                    status=first.status,
                    serving=ServingSeen(deployment=deployment),
                ),
                refused=ApplyRefusal("Deployment", "chat", "AdmissionDenied", "denied by policy", retry=True),
            ),
            "Degraded",
            "AdmissionDenied",
            requeue=True,
        ),
        Row(
            "the API server rejects the object: Failed, no retry (only a spec change helps)",
            replace(
                snapshot(spec, cached=profile_of(spec)),
                refused=ApplyRefusal(
                    "Deployment", "chat", "ObjectRejected", "spec.x: Invalid value", retry=False
                ),
            ),
            "Failed",
            "ObjectRejected",
        ),
    ]
    scaled = merged(EXCLUSIVE_SPEC, {"gpu": {"count": 3}})
    first_x, deployment_x = served(EXCLUSIVE_SPEC, replicas=2, readyReplicas=2, updatedReplicas=2)
    autoscaled = merged(EXCLUSIVE_SPEC, {"autoscaling": {"minGPUs": 1, "maxGPUs": 4}})
    first_a, _ = served(autoscaled, replicas=2, readyReplicas=2, updatedReplicas=2)
    table += [
        Row(
            "scaled from 2 to 3 GPUs: the Deployment asks for 3 pods, the 2 serving stay (Deploying)",
            snapshot(
                scaled,
                cached=profile_of(scaled),
                status=first_x.status,
                serving=ServingSeen(deployment=deployment_x),
            ),
            "Deploying",
            applies=["Deployment", "Service"],
            requeue=True,
            message="2/3 replicas serving",
        ),
        Row(
            "autoscaling removed: the HPA the watch sees is deleted",
            snapshot(
                EXCLUSIVE_SPEC,
                cached=profile_of(EXCLUSIVE_SPEC),
                status=first_a.status,
                serving=ServingSeen(deployment=deployment_x, owned=(("HorizontalPodAutoscaler", "chat"),)),
            ),
            "Ready",
            applies=["Deployment", "Service"],
            deletes=["HorizontalPodAutoscaler"],
        ),
        Row(
            "autoscaling on: the HPA is applied beside the serving objects",
            snapshot(autoscaled, cached=profile_of(autoscaled)),
            "Deploying",
            applies=["Deployment", "Service", "HorizontalPodAutoscaler"],
            requeue=True,
        ),
    ]
    return table


EXCLUSIVE_SPEC = merged(BASE_SPEC, EXCLUSIVE)


def whole_gpus_only() -> ClusterFacts:
    everything = cluster_offering_everything()
    return ClusterFacts({"whole": everything.nodes["whole"]})


def _true(type_: str, reason: str = "") -> dict[str, str]:
    return {"type": type_, "status": "True", "reason": reason}


def _terminated(message: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "creationTimestamp": NOW},
        "status": {
            "containerStatuses": [{"name": "profiler", "state": {"terminated": {"message": message}}}]
        },
    }


def _dra_pod(ready_containers: int) -> dict[str, Any]:
    containers = [{"name": f"vllm-{i}", "ready": i < ready_containers} for i in range(2)]
    return {
        "metadata": {"name": "chat-0"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}], "initContainerStatuses": containers},
    }


@pytest.mark.parametrize("row", rows(), ids=lambda r: r.situation.split(":")[0])
def test_snapshot_in_outcome_out(row: Row):
    outcome = decide(row.snapshot, SETTINGS)
    status = outcome.status
    assert status["phase"] == row.phase, status
    assert row.message in status.get("message", ""), status
    if row.reason is not None:
        reasons = {
            c["reason"] for c in status["conditions"] if c["status"] != "True" or c["type"] == "Degraded"
        }
        assert row.reason in reasons, status["conditions"]
    assert kinds(outcome) == row.applies
    assert [d.kind for d in outcome.delete] == row.deletes
    assert (outcome.requeue_after is not None) == row.requeue, outcome.requeue_after
    assert (outcome.cache_put is not None) == row.cached
    assert status["observedGeneration"] == 1
    for c in status["conditions"]:
        assert c["lastTransitionTime"] == NOW and c["observedGeneration"] == 1


def test_deciding_twice_gives_the_same_outcome():
    """Pure: the same snapshot decides the same, object for object."""
    for row in rows():
        assert decide(row.snapshot, SETTINGS) == decide(row.snapshot, SETTINGS), row.situation


def test_a_phase_change_is_an_event_and_a_steady_pass_posts_none():
    first, deployment = served(EXCLUSIVE_SPEC, replicas=2, readyReplicas=2, updatedReplicas=2)
    assert [(e.type, e.reason) for e in first.events] == [("Normal", "Deploying")]
    observed = snapshot(
        EXCLUSIVE_SPEC,
        cached=profile_of(EXCLUSIVE_SPEC),
        status=first.status,
        serving=ServingSeen(deployment),
    )
    ready = decide(observed, SETTINGS)
    assert [(e.type, e.reason) for e in ready.events] == [("Normal", "Ready")]
    again = decide(replace(observed, status=ready.status), SETTINGS)
    assert again.events == () and again.status == ready.status


def test_a_deployment_of_another_configuration_is_not_up_to_date():
    """The Deployment the watch shows runs other pods (its config hash differs): the new one is
    rolling out, whatever its old status said."""
    first, deployment = served(EXCLUSIVE_SPEC, replicas=2, readyReplicas=2, updatedReplicas=2)
    deployment["spec"]["template"]["metadata"]["annotations"][ANNOTATION_CONFIG_HASH] = "older"
    outcome = decide(
        snapshot(
            EXCLUSIVE_SPEC,
            cached=profile_of(EXCLUSIVE_SPEC),
            status=first.status,
            serving=ServingSeen(deployment),
        ),
        SETTINGS,
    )
    assert outcome.status["phase"] == "Deploying"
    assert "rolling out the new configuration" in outcome.status["message"]


def test_an_error_nobody_expected_is_a_status_not_a_retry_loop(monkeypatch):
    from llmpack.planner import reconcile

    def broken(*_: Any, **__: Any) -> Any:
        raise OverflowError("(34, 'Numerical result out of range')")

    monkeypatch.setattr(reconcile.planner, "decide_admitted", broken)
    outcome = decide(snapshot(BASE_SPEC, cached=profile_of(BASE_SPEC)), SETTINGS)
    assert outcome.status["phase"] == "Failed"
    assert "OverflowError" in outcome.status["message"] and "bug in llmpack" in outcome.status["message"]
    assert outcome.apply == () and outcome.requeue_after is None
    assert condition(outcome, "Degraded")["reason"] == "InternalError"


def test_deletes_name_only_this_deployments_objects():
    row = next(r for r in rows() if r.situation.startswith("cached profile, a Job of an earlier spec"))
    outcome = decide(row.snapshot, SETTINGS)
    assert {d.namespace for d in outcome.delete} == {NAMESPACE}
    assert ObjectRef("Job", NAMESPACE, "chat-profile-0ld") == outcome.delete[-1], "the Job last"
