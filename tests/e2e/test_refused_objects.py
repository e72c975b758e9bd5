"""What the cluster refuses reaches the user: a ValidatingAdmissionPolicy that denies the rendered
Deployment, a ResourceQuota that forbids its pods, and a rollout that exceeds its
progressDeadlineSeconds each show in `kubectl get llmd` and `kubectl describe llmd`, with the
server's or the controller's own words, and a fixed policy is picked up without touching the spec.

The policies are real admission policies of the testbed's API server; the quota is enforced by its
ResourceQuota admission plugin and reported by the ReplicaSet controller; the deadline is the
Deployment controller's."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import yaml
from test_operator import wait_phase

from llmpack.runtime.kube import KubeError

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
LLMPACK_LABEL = "llmpack.io/llmdeployment"


def example(filename: str, name: str) -> dict:
    doc = yaml.safe_load((EXAMPLES / filename).read_text())
    doc["metadata"]["name"] = name
    return doc


def apply_doc(kubectl, namespace: str, doc: dict) -> str:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
    return doc["metadata"]["name"]


def apply_cluster_objects(kubectl, *docs: dict) -> None:
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def delete_cluster_objects(kubectl, *docs: dict) -> None:
    for doc in docs:
        kubectl("delete", doc["kind"].lower(), doc["metadata"]["name"], "--ignore-not-found", check=False)


def only_llmpack_deployments_in(namespace: str) -> dict:
    """Match constraints: Deployments that llmpack renders (its label), in `namespace` only."""
    return {
        "resourceRules": [
            {
                "apiGroups": ["apps"],
                "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"],
                "resources": ["deployments"],
            }
        ],
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "objectSelector": {"matchExpressions": [{"key": LLMPACK_LABEL, "operator": "Exists"}]},
    }


def get_and_describe(kubectl, namespace: str, name: str) -> tuple[str, str]:
    table = kubectl("get", "llmd", "-n", namespace, name, "-o", "wide").stdout
    describe = kubectl("describe", "llmd", "-n", namespace, name).stdout
    print(f"\n$ kubectl get llmd -o wide\n{table}")
    print(f"$ kubectl describe llmd (its conditions)\n{conditions_of(describe)}")
    return table, describe


def conditions_of(describe: str) -> str:
    """The Conditions block of `kubectl describe`."""
    lines = describe.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Conditions:"), None)
    if start is None:
        return describe
    block = [lines[start]]
    indent = len(lines[start]) - len(lines[start].lstrip())
    for line in lines[start + 1 :]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        block.append(line)
    return "\n".join(block)


def described_condition(describe: str, type_: str) -> dict[str, str]:
    """One condition of `kubectl describe`'s Conditions block, as its key: value lines."""
    conditions: list[dict[str, str]] = []
    for line in conditions_of(describe).splitlines()[1:]:
        key, _, value = line.strip().partition(":")
        if line.lstrip().startswith("Last Transition Time") or not conditions:
            conditions.append({})
        conditions[-1][key.strip()] = value.strip()
    return next(c for c in conditions if c.get("Type") == type_)


def wait_enforced(kube, namespace: str, enforced, timeout: float = 30) -> None:
    """Until the API server's policy informer has the new policy: a server-side dry run of a
    Deployment like llmpack's shows it (`enforced` gets the applied object or the KubeError)."""
    probe = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "policy-probe", "namespace": namespace, "labels": {LLMPACK_LABEL: "probe"}},
        "spec": {
            "selector": {"matchLabels": {"app": "probe"}},
            "template": {
                "metadata": {"labels": {"app": "probe"}},
                "spec": {"containers": [{"name": "c", "image": "probe"}]},
            },
        },
    }
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            outcome = kube.apply(probe, dry_run=True)
        except KubeError as err:
            outcome = err
        if enforced(outcome):
            return
        time.sleep(0.5)
    pytest.fail(f"the policy was not enforced within {timeout}s: {outcome}")


def wait_for(kube, namespace: str, name: str, predicate, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    obj = None
    while time.monotonic() < deadline:
        obj = kube.get("LLMDeployment", namespace, name)
        if obj and predicate(obj.get("status") or {}):
            return obj
        time.sleep(0.5)
    pytest.fail(
        f"{name}: {what} not seen in {timeout}s; status: {json.dumps((obj or {}).get('status'), indent=1)}"
    )


def test_an_admission_policy_that_denies_the_deployment_fails_with_its_message(
    operator_process, kube_admin, kubectl, player, namespace
):
    policy_message = "llmpack serving needs an approved GPU budget in this namespace (platform policy)"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": f"deny-llmpack-{namespace}"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": only_llmpack_deployments_in(namespace),
            "validations": [{"expression": "false", "message": policy_message, "reason": "Forbidden"}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": f"deny-llmpack-{namespace}"},
        "spec": {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]},
    }
    apply_cluster_objects(kubectl, policy, binding)
    try:
        wait_enforced(kube_admin, namespace, lambda outcome: isinstance(outcome, KubeError))
        name = apply_doc(
            kubectl, namespace, example("opt-1.3b-mps-dra.yaml", f"denied-{uuid.uuid4().hex[:4]}")
        )
        obj = wait_phase(kube_admin, player, namespace, name, phase="Failed", timeout=120)
        status = obj["status"]
        assert policy_message in status["message"], status["message"]
        assert f"ValidatingAdmissionPolicy '{policy['metadata']['name']}'" in status["message"]
        assert f"the Deployment {name}" in status["message"]
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["Progressing"]["status"] == "False"
        assert conditions["Progressing"]["reason"] == conditions["Degraded"]["reason"] == "AdmissionDenied"
        assert conditions["Available"]["status"] == "False"

        table, describe = get_and_describe(kubectl, namespace, name)
        row = table.strip().splitlines()[1]
        assert "Failed" in row and policy_message in row
        progressing = described_condition(describe, "Progressing")
        assert progressing["Reason"] == "AdmissionDenied" and progressing["Status"] == "False"
        assert policy_message in progressing["Message"]
        events = kubectl("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")
        assert "Failed" in events.stdout

        # The platform team lifts the policy; the spec is not touched: the slow retry picks it up.
        delete_cluster_objects(kubectl, binding)
        wait_for(kube_admin, namespace, name, lambda s: s.get("phase") == "Ready", 90, "Ready after the fix")
    finally:
        delete_cluster_objects(kubectl, binding, policy)


def test_a_quota_that_forbids_the_pods_fails_with_the_quota_named(
    operator_process, kube_admin, kubectl, player, namespace
):
    """The Deployment is admitted; its pods are not: the ReplicaSet controller reports the quota
    on the Deployment (ReplicaFailure), and the operator reads it from there. The namespace has no
    quota of MIG slices at all; the profiling Job measures a whole GPU, which the quota allows."""
    mig_resources = sorted(
        {
            resource
            for node in kube_admin.list("Node")
            for resource in (node.get("status") or {}).get("allocatable", {})
            if resource.startswith("nvidia.com/mig-")
        }
    )
    assert mig_resources, "the testbed has a MIG node"
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-mig-slices", "namespace": namespace},
        "spec": {"hard": {f"requests.{resource}": "0" for resource in mig_resources}},
    }
    kubectl("apply", "-f", "-", input=yaml.safe_dump(quota))
    name = apply_doc(kubectl, namespace, example("opt-2.7b-mig.yaml", "over-quota"))
    obj = wait_phase(kube_admin, player, namespace, name, phase="Failed", timeout=150)
    status = obj["status"]
    assert status["recommendation"]["mode"] == "mig", "it was planned, admitted, and only its pods refused"
    assert "exceeded quota: no-mig-slices" in status["message"], status["message"]
    assert f"the Deployment {name} cannot create its pods" in status["message"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Progressing"]["reason"] == conditions["Available"]["reason"] == "QuotaExceeded"
    assert conditions["Degraded"]["status"] == "True"

    table, describe = get_and_describe(kubectl, namespace, name)
    row = table.strip().splitlines()[1]
    assert "Failed" in row and "exceeded quota: no-mig-slices" in row
    assert described_condition(describe, "Available")["Reason"] == "QuotaExceeded"


def test_a_quota_on_the_dra_device_class_stops_the_pods_with_the_quota_named(
    operator_process, kube_admin, kubectl, player, namespace
):
    """GPUs taken through DRA claims are not `requests.nvidia.com/gpu`: the quota that counts them
    is on the device class (`gpu.nvidia.com.deviceclass.resource.k8s.io/devices`). The Deployment
    and its pods are admitted; the controller-manager's ResourceClaim for each pod is not, and says
    so only in an event on the pod, which the operator reads into the status."""
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-dra-gpus", "namespace": namespace},
        "spec": {"hard": {"gpu.nvidia.com.deviceclass.resource.k8s.io/devices": "0"}},
    }
    kubectl("apply", "-f", "-", input=yaml.safe_dump(quota))
    name = apply_doc(kubectl, namespace, example("opt-1.3b-mps-dra.yaml", "dra-over-quota"))
    obj = wait_phase(kube_admin, player, namespace, name, phase="Failed", timeout=150)
    status = obj["status"]
    assert status["recommendation"]["mode"] == "mps", "it was planned and admitted"
    assert "cannot get its GPU claim" in status["message"], status["message"]
    assert "exceeded quota: no-dra-gpus" in status["message"], status["message"]
    assert "gpu.nvidia.com.deviceclass.resource.k8s.io/devices" in status["message"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Progressing"]["reason"] == "QuotaExceeded"

    # The admin raises the quota: the claim is made on the controller's next try and the pod
    # goes on, without the spec being touched.
    quota["spec"]["hard"]["gpu.nvidia.com.deviceclass.resource.k8s.io/devices"] = "1"
    kubectl("apply", "-f", "-", input=yaml.safe_dump(quota))
    wait_for(
        kube_admin, namespace, name, lambda s: s.get("phase") == "Ready", 180, "Ready after the quota rose"
    )


def test_a_rollout_past_its_progress_deadline_is_degraded(
    operator_process, kube_admin, kubectl, player, namespace
):
    """A rollout that stalls with nothing wrong in any pod (its containers never start, as an image
    pull that hangs): the Deployment controller gives up after progressDeadlineSeconds. llmpack
    renders a deadline that covers a model's whole start-up (tens of minutes); the platform's own
    MutatingAdmissionPolicy shortens it here, as a cluster may."""
    mutation = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": f"short-deadline-{namespace}"},
        "spec": {
            "failurePolicy": "Fail",
            "reinvocationPolicy": "Never",
            "matchConstraints": only_llmpack_deployments_in(namespace),
            "mutations": [
                {
                    "patchType": "ApplyConfiguration",
                    "applyConfiguration": {
                        "expression": "Object{spec: Object.spec{progressDeadlineSeconds: 5}}"
                    },
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": f"short-deadline-{namespace}"},
        "spec": {"policyName": mutation["metadata"]["name"]},
    }
    apply_cluster_objects(kubectl, mutation, binding)
    try:
        wait_enforced(
            kube_admin,
            namespace,
            lambda outcome: isinstance(outcome, dict) and outcome["spec"]["progressDeadlineSeconds"] == 5,
        )
        # Serving pods that take env from a Secret are held Pending by the testbed's kwok stages
        # until the player (the kubelet's stand-in) resolves it; here nobody does.
        kubectl("create", "secret", "generic", "engine-settings", "-n", namespace, "--from-literal=mode=fast")
        doc = example("opt-1.3b-mps-dra.yaml", "stalls")
        doc["spec"]["serving"] = {
            "env": [
                {
                    "name": "ENGINE_MODE",
                    "valueFrom": {"secretKeyRef": {"name": "engine-settings", "key": "mode"}},
                }
            ]
        }
        name = apply_doc(kubectl, namespace, doc)
        # Play the profiling pod only (player.play_once would also resolve the serving pods' env).
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            for pod in player.pending_pods(namespace):
                player.play(pod)
            phase = ((kube_admin.get("LLMDeployment", namespace, name) or {}).get("status") or {}).get(
                "phase"
            )
            if phase not in (None, "Pending", "Profiling", "Advising"):
                break
            time.sleep(0.3)
        deployment = kube_admin.get("Deployment", namespace, name)
        assert deployment["spec"]["progressDeadlineSeconds"] == 5, "the platform's policy set it"
        obj = wait_for(kube_admin, namespace, name, lambda s: s.get("phase") == "Degraded", 90, "Degraded")
        status = obj["status"]
        assert "ProgressDeadlineExceeded" not in status["message"]  # the reason is the condition's
        assert "has timed out progressing" in status["message"], status["message"]
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["Progressing"]["status"] == "False"
        assert (
            conditions["Progressing"]["reason"]
            == conditions["Degraded"]["reason"]
            == "ProgressDeadlineExceeded"
        )

        table, describe = get_and_describe(kubectl, namespace, name)
        assert "Degraded" in table.strip().splitlines()[1]
        assert described_condition(describe, "Degraded")["Reason"] == "ProgressDeadlineExceeded"
    finally:
        delete_cluster_objects(kubectl, binding, mutation)
