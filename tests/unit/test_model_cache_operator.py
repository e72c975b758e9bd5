"""spec.model.cache through the reconciler as the operator runs it (fake API): the claim and its
fill Job come first and nothing loads the model until the Job succeeded; then the profiling Job
and every serving pod mount the claim read-only and load offline; a failed fill ends Failed with
the fill command's own words; a new revision fills a new cache and prunes the old one."""

from __future__ import annotations

from typing import Any

import pytest
from test_badinput_pure import (
    FakeKube,
    body,
    cluster_offering_everything,
    finish_profiling,
    simulated_profile,
)

from llmpack.api.llmdeployment import LLMDeploymentSpec
from llmpack.controller.reconciler import OperatorConfig, Reconciler

CACHE = {"size": "10Gi", "storageClassName": "nfs"}
SPEC = {
    "model": {
        "name": "facebook/opt-1.3b",
        "revision": "main",
        "cache": CACHE,
        "hfTokenSecretRef": {"name": "hf"},
    },
    "sharing": {"mode": "mps", "mpsProvider": "dra"},
}


def applied(kube: FakeKube, kind: str) -> list[dict[str, Any]]:
    return [o for o in kube.applied if o["kind"] == kind]


def objects(kube: FakeKube, kind: str) -> dict[str, dict[str, Any]]:
    return {name: o for (k, _, name), o in kube.objects.items() if k == kind}


def complete(job: dict[str, Any], *, failed_with: str | None = None, kube: FakeKube | None = None) -> None:
    if failed_with is None:
        job["status"] = {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}
        return
    job["status"] = {"conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}]}
    assert kube is not None
    meta = job["metadata"]
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": meta["name"] + "-x1",
                "namespace": meta["namespace"],
                "labels": {**job["spec"]["template"]["metadata"]["labels"], "job-name": meta["name"]},
            },
            "spec": job["spec"]["template"]["spec"],
            "status": {
                "phase": "Failed",
                "containerStatuses": [
                    {"name": "fill", "state": {"terminated": {"exitCode": 1, "message": failed_with}}}
                ],
            },
        }
    )


def run(spec: dict[str, Any]):
    kube = FakeKube()
    reconciler = Reconciler(kube, OperatorConfig(), cluster_offering_everything(), kube.store)
    obj = body(spec)

    def again(new_spec: dict[str, Any] | None = None) -> dict[str, Any]:
        nonlocal obj
        if new_spec is not None:
            obj = {**obj, "spec": new_spec}
        status = reconciler.reconcile(obj).status
        obj = {**obj, "status": status}
        return status

    return kube, again


def test_the_cache_is_filled_before_anything_loads_the_model_and_then_mounted_read_only():
    kube, again = run(SPEC)
    status = again()
    assert status["phase"] == "Pending" and "filling the model cache" in status["message"], status
    assert status["modelCache"]["phase"] == "Filling"
    (claim,) = objects(kube, "PersistentVolumeClaim").values()
    assert claim["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": "10Gi"}},
        "storageClassName": "nfs",
    }
    (fill,) = objects(kube, "Job").values()
    pod = fill["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["llmpack", "fill-model-cache"]
    assert container["args"][:4] == ["--model", "facebook/opt-1.3b", "--revision", "main"]
    assert {
        "name": "model-cache",
        "persistentVolumeClaim": {"claimName": claim["metadata"]["name"], "readOnly": False},
    } in pod["volumes"]
    assert pod["automountServiceAccountToken"] is False, "the fill needs no API access"
    assert {e["name"] for e in container["env"]} >= {"HF_TOKEN", "HF_HOME"}
    assert not applied(kube, "Deployment") and all(
        j["metadata"]["name"] == fill["metadata"]["name"] for j in applied(kube, "Job")
    )

    complete(fill)
    status = again()
    assert status["phase"] == "Profiling", status
    assert status["modelCache"]["phase"] == "Ready"
    assert {"type": "ModelCached", "status": "True"}.items() <= next(
        c for c in status["conditions"] if c["type"] == "ModelCached"
    ).items()
    profiler = next(j for j in objects(kube, "Job").values() if j is not fill)
    assert_offline_from(profiler["spec"]["template"]["spec"], claim["metadata"]["name"])

    finish_profiling_of(kube, profiler)
    status = again()
    assert status["phase"] == "Deploying", status
    (deployment,) = objects(kube, "Deployment").values()
    assert_offline_from(deployment["spec"]["template"]["spec"], claim["metadata"]["name"])
    assert fill["metadata"]["name"] in objects(kube, "Job"), "the filled Job is kept: it is the record"


def finish_profiling_of(kube: FakeKube, profiler: dict[str, Any]) -> None:
    fill_jobs = {n: j for n, j in objects(kube, "Job").items() if j is not profiler}
    for name in fill_jobs:  # finish_profiling expects the profiling Job alone
        del kube.objects[("Job", "team-a", name)]
    profile = simulated_profile(LLMDeploymentSpec.model_validate(SPEC))
    finish_profiling(kube, "team-a", profile.model_dump_json())
    kube.objects.update({("Job", "team-a", n): j for n, j in fill_jobs.items()})


def assert_offline_from(pod: dict[str, Any], claim: str) -> None:
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}} in pod[
        "volumes"
    ]
    vllm = [c for c in pod.get("initContainers", []) + pod["containers"] if c["name"] != "router"]
    assert vllm
    for container in vllm:
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["HF_HUB_CACHE"] == "/models" and env["HF_HUB_OFFLINE"] == "1"
        assert {"name": "model-cache", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]


def test_a_failed_fill_says_why_and_a_new_token_is_a_new_job():
    kube, again = run(SPEC)
    again()
    (fill,) = objects(kube, "Job").values()
    complete(fill, failed_with="model facebook/opt-1.3b is gated: set spec.model.hfTokenSecretRef", kube=kube)
    status = again()
    assert status["phase"] == "Failed", status
    assert "is gated: set spec.model.hfTokenSecretRef" in status["message"]
    assert "then delete the Job to fill it again" in status["message"]
    assert status["modelCache"]["phase"] == "Failed"
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "ModelCacheFailed"

    fixed = {**SPEC, "model": {**SPEC["model"], "hfTokenSecretRef": {"name": "hf-with-access"}}}
    status = again(fixed)
    assert status["phase"] == "Pending" and status["modelCache"]["phase"] == "Filling", status
    assert ("delete", "Job", "team-a", fill["metadata"]["name"]) in kube.calls
    assert len(objects(kube, "PersistentVolumeClaim")) == 1, "the same claim, filled by the new Job"


def test_a_new_revision_fills_a_new_cache_and_prunes_the_old_one_once_full_and_no_cache_prunes_all():
    kube, again = run(SPEC)
    again()
    (old_claim,) = objects(kube, "PersistentVolumeClaim")
    v2 = {**SPEC, "model": {**SPEC["model"], "revision": "v2"}}
    again(v2)
    (new_claim,) = [n for n in objects(kube, "PersistentVolumeClaim") if n != old_claim]
    assert ("delete", "PersistentVolumeClaim", "team-a", old_claim) not in kube.calls, (
        "pods serving from the old cache may restart while the new one fills"
    )
    (new_fill,) = [j for j in objects(kube, "Job").values() if j["metadata"]["name"].startswith(new_claim)]
    complete(new_fill)
    again(v2)
    assert ("delete", "PersistentVolumeClaim", "team-a", old_claim) in kube.calls
    status = again({**SPEC, "model": {k: v for k, v in SPEC["model"].items() if k != "cache"}})
    assert ("delete", "PersistentVolumeClaim", "team-a", new_claim) in kube.calls
    assert "modelCache" not in status and all(c["type"] != "ModelCached" for c in status["conditions"])


def test_a_deleted_claim_is_filled_again_before_anything_loads_from_it():
    """A user clearing a corrupt cache deletes its claim: the serving pods that hold it are stopped
    (their Deployment deleted) so that it can go, the status says so and nothing is filled into it;
    once it is gone a new claim is filled by a new run of the Job (the old run's success no longer
    holds)."""
    kube, again = run(SPEC)
    again()
    (fill,) = objects(kube, "Job").values()
    complete(fill)
    assert again()["modelCache"]["phase"] == "Ready"
    profiler = next(j for j in objects(kube, "Job").values() if j is not fill)
    finish_profiling_of(kube, profiler)
    assert again()["phase"] == "Deploying"
    (deployment,) = objects(kube, "Deployment")
    (claim,) = objects(kube, "PersistentVolumeClaim")
    key = ("PersistentVolumeClaim", "team-a", claim)
    kube.objects[key]["metadata"]["deletionTimestamp"] = "2026-12-05T07:00:00Z"
    status = again()
    assert ("delete", "Job", "team-a", fill["metadata"]["name"]) in kube.calls
    assert status["phase"] == "Pending" and status["modelCache"]["phase"] == "Filling", status
    assert "the serving pods that mount it are stopped so that it goes" in status["message"]
    assert ("delete", "Deployment", "team-a", deployment) in kube.calls
    del kube.objects[key]  # the last pod that mounted it went
    kube.objects.pop(("Job", "team-a", fill["metadata"]["name"]), None)
    status = again()
    assert status["modelCache"]["phase"] == "Filling" and "downloading" in status["message"], status
    assert claim in objects(kube, "PersistentVolumeClaim") and fill["metadata"]["name"] in objects(
        kube, "Job"
    )


# -- a claim the cluster admin filled and shares (spec.model.cache.claimName) --------------------

SHARED = {**SPEC, "model": {**SPEC["model"], "cache": {"claimName": "models-shared"}}}


def admin_claim(kube: FakeKube, *, phase: str = "Bound", uid: str = "uid-1") -> None:
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "models-shared", "namespace": "team-a", "uid": uid},
            "spec": {"accessModes": ["ReadOnlyMany"], "volumeName": "models-team-a"},
            "status": {"phase": phase},
        }
    )


def test_a_shared_claim_is_checked_read_only_then_mounted_and_never_written_nor_deleted():
    kube, again = run(SHARED)
    admin_claim(kube)
    status = again()
    assert status["phase"] == "Pending" and "checking the shared model cache" in status["message"], status
    assert status["modelCache"] == {
        "claim": "models-shared",
        "job": status["modelCache"]["job"],
        "shared": True,
        "phase": "Verifying",
        "message": "reading facebook/opt-1.3b from models-shared",
    }
    assert not applied(kube, "PersistentVolumeClaim"), "the admin's claim is not the operator's to apply"
    (check,) = objects(kube, "Job").values()
    pod = check["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][-1] == "--verify-only" and container["args"][:4] == [
        "--model",
        "facebook/opt-1.3b",
        "--revision",
        "main",
    ]
    assert {
        "name": "model-cache",
        "persistentVolumeClaim": {"claimName": "models-shared", "readOnly": True},
    } in pod["volumes"]
    assert {"name": "model-cache", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
    assert "HF_TOKEN" in {e["name"] for e in container["env"]}, "a gated model's access is asked with it"

    complete(check)
    status = again()
    assert status["phase"] == "Profiling" and status["modelCache"]["phase"] == "Ready", status
    assert status["modelCache"]["message"] == "verified"
    profiler = next(j for j in objects(kube, "Job").values() if j is not check)
    assert_offline_from(profiler["spec"]["template"]["spec"], "models-shared")
    finish_profiling_of(kube, profiler)
    assert again()["phase"] == "Deploying"
    (deployment,) = objects(kube, "Deployment").values()
    assert_offline_from(deployment["spec"]["template"]["spec"], "models-shared")

    # back to a cache of its own: the shared claim is left as it is
    status = again(SPEC)
    assert status["modelCache"]["shared"] is False and status["modelCache"]["phase"] == "Filling"
    assert ("delete", "Job", "team-a", check["metadata"]["name"]) in kube.calls
    assert not [c for c in kube.calls if c[0] == "delete" and c[1] == "PersistentVolumeClaim"]
    again({**SPEC, "model": {k: v for k, v in SPEC["model"].items() if k != "cache"}})
    assert ("PersistentVolumeClaim", "team-a", "models-shared") in kube.objects
    assert not [
        c
        for c in kube.calls
        if c[1:] == ("PersistentVolumeClaim", "team-a", "models-shared") and c[0] != "get"
    ]


def test_a_shared_claim_that_fails_its_check_says_what_the_admin_must_do():
    kube, again = run(SHARED)
    admin_claim(kube)
    again()
    (check,) = objects(kube, "Job").values()
    complete(
        check,
        failed_with="model.safetensors in the cache does not match the Hub's SHA-256: ask the cluster admin",
        kube=kube,
    )
    status = again()
    assert status["phase"] == "Failed" and status["modelCache"]["phase"] == "Failed", status
    assert status["message"].startswith("checking the shared model cache models-shared failed (Job ")
    assert (
        "ask the cluster admin" in status["message"]
        and "delete the Job to check it again" in status["message"]
    )
    assert not objects(kube, "Deployment") and len(objects(kube, "Job")) == 1, (
        "nothing loads an unchecked cache"
    )


def serving_from_the_shared_claim(kube: FakeKube, again) -> dict[str, Any]:
    """Checked, profiled and serving; the check Job."""
    admin_claim(kube, uid="uid-1")
    again()
    (check,) = objects(kube, "Job").values()
    assert check["metadata"]["annotations"]["llmpack.io/claim-uid"] == "uid-1"
    complete(check)
    again()
    profiler = next(j for j in objects(kube, "Job").values() if j is not check)
    finish_profiling_of(kube, profiler)
    assert again()["phase"] == "Deploying"
    assert objects(kube, "Deployment")
    return check


def deployments_deleted(kube: FakeKube, *, since: int = 0) -> bool:
    """Whether a pass after call number `since` deleted a Deployment."""
    return any(c[0] == "delete" and c[1] == "Deployment" for c in kube.calls[since:])


def test_a_shared_claim_made_again_by_the_admin_stops_serving_until_it_is_checked_again():
    """Pods that start after the admin replaced the claim would mount what nobody checked."""
    kube, again = run(SHARED)
    check = serving_from_the_shared_claim(kube, again)
    admin_claim(kube, uid="uid-2")
    mark = len(kube.calls)
    status = again()
    assert status["phase"] == "Pending" and status["modelCache"]["phase"] == "Verifying", status
    assert "models-shared was made again: checking it again" in status["message"]
    assert ("delete", "Job", "team-a", check["metadata"]["name"]) in kube.calls
    assert deployments_deleted(kube, since=mark)
    status = again()
    (again_check,) = objects(kube, "Job").values()
    assert again_check["metadata"]["annotations"]["llmpack.io/claim-uid"] == "uid-2"
    assert status["modelCache"]["phase"] == "Verifying" and not objects(kube, "Deployment")
    complete(again_check)
    again()
    assert again()["phase"] == "Deploying" and objects(kube, "Deployment"), "serving comes back once checked"


def test_a_shared_claim_being_deleted_stops_serving_so_that_it_can_go():
    kube, again = run(SHARED)
    check = serving_from_the_shared_claim(kube, again)
    kube.objects[("PersistentVolumeClaim", "team-a", "models-shared")]["metadata"]["deletionTimestamp"] = (
        "now"
    )
    status = again()
    assert status["modelCache"]["phase"] == "Waiting" and "is being deleted" in status["message"], status
    assert deployments_deleted(kube)
    assert check["metadata"]["name"] in objects(kube, "Job"), "the claim's check is kept while it waits"
    assert ("PersistentVolumeClaim", "team-a", "models-shared") in kube.objects


def test_a_new_token_checks_the_same_claim_again_and_a_failed_check_stops_nothing_already_serving():
    """The running pods mount the claim an earlier check passed; new pods wait for a passing one."""
    kube, again = run(SHARED)
    serving_from_the_shared_claim(kube, again)
    mark = len(kube.calls)
    other = {**SHARED, "model": {**SHARED["model"], "hfTokenSecretRef": {"name": "hf-other"}}}
    status = again(other)
    assert status["modelCache"]["phase"] == "Verifying", status
    (recheck,) = objects(kube, "Job").values()
    complete(
        recheck,
        failed_with="the token of spec.model.hfTokenSecretRef may not read facebook/opt-1.3b",
        kube=kube,
    )
    status = again(other)
    assert status["phase"] == "Failed" and "may not read facebook/opt-1.3b" in status["message"], status
    assert not deployments_deleted(kube, since=mark) and objects(kube, "Deployment")


def test_a_shared_claim_gone_for_a_while_keeps_its_check_and_stops_only_its_own_pods():
    kube, again = run(SHARED)
    check = serving_from_the_shared_claim(kube, again)
    claim = kube.objects.pop(("PersistentVolumeClaim", "team-a", "models-shared"))
    mark = len(kube.calls)
    status = again()
    assert status["modelCache"]["phase"] == "Waiting" and status["phase"] == "Pending", status
    assert ("delete", "Job", "team-a", check["metadata"]["name"]) not in kube.calls[mark:]
    assert deployments_deleted(kube, since=mark), "pods that start now could not mount it"
    kube.put(claim)  # the same claim (its uid): what was checked
    status = again()
    assert status["modelCache"]["phase"] == "Ready" and check["metadata"]["name"] in objects(kube, "Job")
    assert ("delete", "Job", "team-a", check["metadata"]["name"]) not in kube.calls[mark:]


def test_moving_from_an_own_cache_to_a_missing_shared_claim_keeps_serving_from_the_own_one():
    kube, again = run(SPEC)
    again()
    (fill,) = objects(kube, "Job").values()
    complete(fill)
    again()
    profiler = next(j for j in objects(kube, "Job").values() if j is not fill)
    finish_profiling_of(kube, profiler)
    assert again()["phase"] == "Deploying"
    mark = len(kube.calls)
    status = again(SHARED)  # no such claim yet
    assert status["modelCache"]["phase"] == "Waiting", status
    assert not deployments_deleted(kube, since=mark), "those pods mount the own cache, not the missing one"
    assert not [c for c in kube.calls[mark:] if c[0] == "delete" and c[1] == "PersistentVolumeClaim"]


def test_a_ready_shared_cache_is_looked_at_again_as_no_watch_sees_the_admins_claim():
    kube, _ = run(SHARED)
    admin_claim(kube)
    reconciler = Reconciler(kube, OperatorConfig(), cluster_offering_everything(), kube.store)
    reconciler.reconcile(body(SHARED))
    (check,) = objects(kube, "Job").values()
    complete(check)
    outcome = reconciler.reconcile(body(SHARED))
    assert outcome.status["modelCache"]["phase"] == "Ready"
    assert outcome.retry_after == OperatorConfig().retry_seconds


def test_a_claim_without_a_uid_is_checked_once_not_in_a_loop():
    kube, again = run(SHARED)
    admin_claim(kube)
    del kube.objects[("PersistentVolumeClaim", "team-a", "models-shared")]["metadata"]["uid"]
    again()
    (check,) = objects(kube, "Job").values()
    mark = len(kube.calls)
    again()
    again()
    assert not [c for c in kube.calls[mark:] if c[0] == "delete"], kube.calls[mark:]
    assert objects(kube, "Job") == {check["metadata"]["name"]: check}


def test_the_check_runs_in_the_operators_image_whatever_the_spec_names():
    kube, again = run({**SHARED, "profiling": {"image": "registry.example/tenant/profiler:1"}})
    admin_claim(kube)
    again()
    (check,) = objects(kube, "Job").values()
    assert check["spec"]["template"]["spec"]["containers"][0]["image"] == OperatorConfig().profiler_image


@pytest.mark.parametrize(
    ("claim", "reason", "says"),
    [
        (
            None,
            "ModelCacheClaimNotFound",
            "claim models-shared does not exist in namespace team-a: ask the cluster admin",
        ),
        (
            "Pending",
            "ModelCacheClaimUnbound",
            "is Pending, not bound to a volume: ask the cluster admin to bind it",
        ),
        ("Lost", "ModelCacheClaimUnbound", "is Lost, not bound to a volume"),
        (
            "deleting",
            "ModelCacheClaimDeleted",
            "is being deleted: the serving pods that mount it are stopped",
        ),
    ],
)
def test_a_shared_claim_not_ready_to_read_is_waited_for_and_looked_at_again(claim, reason, says):
    kube, again = run(SHARED)
    if claim == "deleting":
        admin_claim(kube)
        kube.objects[("PersistentVolumeClaim", "team-a", "models-shared")]["metadata"][
            "deletionTimestamp"
        ] = "now"
    elif claim is not None:
        admin_claim(kube, phase=claim)
    reconciler = Reconciler(kube, OperatorConfig(), cluster_offering_everything(), kube.store)
    outcome = reconciler.reconcile(body(SHARED))
    status = outcome.status
    assert status["phase"] == "Pending" and says in status["message"], status
    cached = next(c for c in status["conditions"] if c["type"] == "ModelCached")
    assert cached["reason"] == reason and cached["status"] == "False"
    assert status["modelCache"]["phase"] == "Waiting" and status["modelCache"]["shared"] is True
    assert not objects(kube, "Job"), "nothing reads a claim that is not there to read"
    assert outcome.retry_after, "no watch sees the admin's claim: the operator looks again"
    admin_claim(kube)
    assert again()["modelCache"]["phase"] == "Verifying"


@pytest.mark.parametrize(
    ("cache", "says"),
    [
        ({}, "model.cache takes one of size"),
        ({"size": "1Gi", "claimName": "x"}, "model.cache takes one of size"),
        (
            {"claimName": "x", "storageClassName": "nfs"},
            "storageClassName and accessMode are for a claim the operator makes",
        ),
        (
            {"claimName": "x", "accessMode": "ReadWriteOnce"},
            "storageClassName and accessMode are for a claim the operator makes",
        ),
    ],
)
def test_a_cache_is_either_the_operators_or_the_admins(cache, says):
    with pytest.raises(ValueError, match=says):
        LLMDeploymentSpec.model_validate({**SPEC, "model": {**SPEC["model"], "cache": cache}})
