"""Security of what llmpack creates, on the objects the operator really applies: each spec goes
through the reconciler (spec -> profiling Job -> profile -> advise -> plan -> render -> apply) for
every sharing mode, and the assertions look at every object it applied.

- pods are never privileged, share no host namespace (MPS comes from DRA or the device plugin,
  never hostIPC), drop every capability, cannot escalate, run as non-root under RuntimeDefault
  seccomp, and mount nothing from the host;
- serving pods mount no ServiceAccount token; the profiling pod mounts the token of its own
  ServiceAccount, whose Role is exactly get/update/patch on its one result ConfigMap;
- the Hugging Face token reaches containers only through a secretKeyRef: the operator never reads
  a Secret, and the token never appears in a status, an event, a log line or an object.

The chart's RBAC is checked in tests/integration/test_chart.py; render-level unit tests of the
same properties on hand-made plans are in test_render.py.

serving.env may not set NVIDIA_*, CUDA_MPS_* or CUDA_VISIBLE_DEVICES: the NVIDIA container runtime
honours NVIDIA_VISIBLE_DEVICES in unprivileged containers by default, so a user who may only create
LLMDeployments could otherwise get every GPU of the node beyond its MIG slice, MPS share or claim.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from test_badinput_pure import (
    BASE_SPEC,
    FakeKube,
    Run,
    cluster_offering_everything,
    merged,
    reconcile_through,
)

from llmpack.hardware.cluster import ClusterFacts

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "llmpack"
SECRET_NAME, SECRET_KEY = "hf-credentials", "hf-token"
TOKEN = "hf_zzTOPSECRETzzTOKENzz"  # the Secret's value; must never surface anywhere

MODES = {
    "exclusive": {"sharing": {"mode": "exclusive"}, "gpu": {"count": 2}},
    "mps-dra": {"sharing": {"mode": "mps", "mpsProvider": "dra"}},
    "mps-device-plugin": {"sharing": {"mode": "mps", "mpsProvider": "devicePlugin"}},
    "mig": {"sharing": {"mode": "mig"}},
}
EXPECTED = {
    "exclusive": ("exclusive", None),
    "mps-dra": ("mps", "dra"),
    "mps-device-plugin": ("mps", "devicePlugin"),
    "mig": ("mig", None),
}


def spec_for(mode: str, **extra: Any) -> dict[str, Any]:
    """A gated model with the knobs a user may turn on the pods: selector, tolerations, env,
    resources."""
    user = {
        "model": {"hfTokenSecretRef": {"name": SECRET_NAME, "key": SECRET_KEY}},
        "gpu": {
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
        "serving": {
            "env": [{"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"}],
            "resources": {"requests": {"cpu": "4", "memory": "32Gi"}, "limits": {"memory": "64Gi"}},
        },
    }
    return merged(merged(merged(BASE_SPEC, user), MODES[mode]), extra)


def gpu_pool() -> ClusterFacts:
    """Every kind of GPU node, all labelled pool=gpu (the specs' gpu.nodeSelector)."""
    return cluster_offering_everything(labels={"pool": "gpu"})


def kube_with_the_secret() -> FakeKube:
    kube = FakeKube()
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET_NAME, "namespace": "team-a"},
            "stringData": {SECRET_KEY: TOKEN},
        }
    )
    return kube


@functools.cache
def reconciled(mode: str) -> Run:
    run = reconcile_through(spec_for(mode), kube=kube_with_the_secret(), cluster=gpu_pool())
    rec = run.status["recommendation"]
    assert (rec["mode"], rec.get("mpsProvider")) == EXPECTED[mode], rec
    return run


def applied(mode: str, kind: str | None = None) -> list[dict[str, Any]]:
    return [o for o in reconciled(mode).kube.applied if kind is None or o["kind"] == kind]


def pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Deployment", "Job")]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"], *pod.get("ephemeralContainers", [])]


def walk(node: Any, path: str = ""):
    """(path, key, value) for every key of every mapping in a JSON tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from walk(item, f"{path}[{i}]")


@pytest.fixture(params=list(MODES))
def mode(request) -> str:
    return request.param


def test_every_mode_renders_serving_pods_and_a_profiling_job(mode):
    kinds = [o["kind"] for o in applied(mode)]
    assert "Job" in kinds and "Deployment" in kinds, kinds
    assert reconciled(mode).status["phase"] in ("Deploying", "Ready")


# -- pods --------------------------------------------------------------------------------------------


def test_no_pod_is_privileged_or_shares_a_host_namespace(mode):
    pods = pod_specs(applied(mode))
    assert len(pods) == 2  # the profiling Job's and the serving Deployment's
    for pod in pods:
        for host in ("hostNetwork", "hostIPC", "hostPID"):
            assert pod.get(host, False) is False, host
        assert not pod.get("shareProcessNamespace", False)
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] > 0
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in containers(pod):
            sc = container["securityContext"]
            assert sc["privileged"] is False, container["name"]
            assert sc["allowPrivilegeEscalation"] is False, container["name"]
            assert sc["capabilities"] == {"drop": ["ALL"]}, container["name"]
            assert sc.get("runAsNonRoot", True) is True and sc.get("runAsUser", 1) != 0
            assert sc.get("seccompProfile", {"type": "RuntimeDefault"}) == {"type": "RuntimeDefault"}
            assert "procMount" not in sc and "windowsOptions" not in sc
            assert not any("hostPort" in p for p in container.get("ports", [])), container["name"]


def test_nothing_anywhere_grants_host_access_or_privilege(mode):
    """A scan of every applied object, so a field added anywhere later is caught too."""
    for obj in applied(mode):
        for path, key, value in walk(obj):
            where = f"{obj['kind']} {obj['metadata']['name']}{path}.{key}"
            assert key not in ("hostPath", "hostPort", "procMount"), where
            assert not (key in ("privileged", "hostIPC", "hostPID", "hostNetwork") and value is True), where
            assert not (key == "allowPrivilegeEscalation" and value is True), where
            assert not (key == "add" and path.endswith("capabilities")), where
            assert not (key == "type" and value in ("Unconfined", "Localhost")), where
        assert "SYS_ADMIN" not in json.dumps(obj)


def test_pod_volumes_are_only_scratch_space(mode):
    for pod in pod_specs(applied(mode)):
        for volume in pod["volumes"]:
            assert set(volume) == {"name", "emptyDir"}, volume  # no hostPath, secret, projected token


def test_serving_pods_mount_no_service_account_token(mode):
    (deployment,) = applied(mode, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod and "serviceAccount" not in pod


def test_serving_is_reached_only_inside_the_cluster(mode):
    (service,) = {o["metadata"]["name"]: o for o in applied(mode, "Service")}.values()
    assert service["spec"]["type"] == "ClusterIP"
    assert "externalIPs" not in service["spec"]


def test_a_dra_claim_asks_for_exactly_one_gpu():
    for template in applied("mps-dra", "ResourceClaimTemplate"):
        (request,) = template["spec"]["spec"]["devices"]["requests"]
        assert request["exactly"]["allocationMode"] == "ExactCount" and request["exactly"]["count"] == 1
        assert request["exactly"]["deviceClassName"] == "gpu.nvidia.com"
        assert request["exactly"].get("adminAccess") is not True


# -- the profiling Job's identity --------------------------------------------------------------------


def test_the_profiling_pod_mounts_only_its_own_service_account(mode):
    (job,) = applied(mode, "Job")
    pod = job["spec"]["template"]["spec"]
    (account,) = applied(mode, "ServiceAccount")
    assert pod["automountServiceAccountToken"] is True, "publishing its result is its job"
    assert pod["serviceAccountName"] == account["metadata"]["name"] == job["metadata"]["name"]
    assert account["metadata"]["name"] != "default"


def test_the_profiling_role_is_get_update_patch_on_its_one_result_configmap(mode):
    (job,) = applied(mode, "Job")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    result = args[args.index("--result-configmap") + 1]
    (role,) = applied(mode, "Role")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [result],
            "verbs": ["get", "update", "patch"],
        }
    ]
    (binding,) = applied(mode, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": job["spec"]["template"]["spec"]["serviceAccountName"],
            "namespace": "team-a",
        }
    ]
    (configmap,) = [o for o in applied(mode, "ConfigMap") if o["metadata"]["name"] == result]
    assert configmap["metadata"]["namespace"] == role["metadata"]["namespace"] == job["metadata"]["namespace"]
    assert not [o for o in applied(mode) if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_the_profiling_identity_is_removed_once_the_profile_is_cached(mode):
    kube = reconciled(mode).kube
    left = [
        (k, n)
        for (k, ns, n) in kube.objects
        if ns == "team-a" and k in ("Job", "Role", "RoleBinding", "ServiceAccount")
    ]
    assert left == [], "a finished profiler keeps no identity"


# -- the Hugging Face token --------------------------------------------------------------------------


def test_the_token_reaches_containers_only_through_a_secret_key_ref(mode):
    reference = {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": SECRET_NAME, "key": SECRET_KEY}}}
    with_token = 0
    for pod in pod_specs(applied(mode)):
        for container in containers(pod):
            assert "envFrom" not in container, "no Secret is spread into the environment wholesale"
            for env in container.get("env", []):
                if "secretKeyRef" in json.dumps(env):
                    assert env == reference, env
                    with_token += 1
    assert with_token >= 2, "the profiler and every vLLM container download the model"
    for obj in applied(mode):
        assert obj["kind"] != "Secret"
        for path, key, value in walk(obj):
            if value == SECRET_NAME:
                assert path.endswith("secretKeyRef") and key == "name", f"{obj['kind']}{path}.{key}"


def test_the_operator_never_reads_a_secret_nor_leaks_the_token(mode, caplog):
    caplog.set_level(logging.DEBUG)
    run = reconcile_through(spec_for(mode), kube=kube_with_the_secret(), cluster=gpu_pool())
    assert not [c for c in run.kube.calls if c[1] == "Secret"], "the operator never touches Secrets"
    surfaces = {
        "status": json.dumps(run.status),
        "events": json.dumps(run.events),
        "log": caplog.text,
        "objects": json.dumps(run.kube.applied),
    }
    for where, text in surfaces.items():
        assert TOKEN not in text, where


def test_controller_code_never_requests_the_secret_kind():
    """Grep over the source, as the fake API above only sees what one reconcile does: no code path
    of the operator, the profiler or the launcher reads, lists or writes Secrets. The only mention
    allowed is the path table of runtime/kube.py (what a kind's URL is)."""
    allowed_tables = {'"Secret": ("secrets", True),', '"Secret": "v1",'}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            names_the_kind = re.search(r"""["']Secret["']""", line) and line.strip() not in allowed_tables
            names_the_path = re.search(r"/secrets\b", line) and "/var/run/secrets/" not in line
            if names_the_kind or names_the_path:
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []
    kube_py = (PACKAGE / "runtime" / "kube.py").read_text()
    assert all(entry in kube_py for entry in allowed_tables), (
        "the documented exception moved: update this test"
    )


# -- what user input may not reach -------------------------------------------------------------------


def test_user_input_cannot_put_a_gpu_claim_or_resource_of_its_own(mode):
    """GPU resources and claims come from the plan only: serving.resources holds cpu, memory and
    ephemeral-storage, so a spec asking for more GPUs than planned, or another pod's claim, is
    refused naming the fields (the CRD refuses it too: tests/bound_examples.py) and nothing is
    applied."""
    spec = spec_for(
        mode,
        serving={
            "resources": {
                "limits": {"nvidia.com/gpu": "8", "memory": "1Gi"},
                "requests": {"nvidia.com/gpu": "8"},
                "claims": [{"name": "someone-elses"}],
            }
        },
    )
    run = reconcile_through(spec, kube=kube_with_the_secret(), cluster=gpu_pool())
    assert run.status["phase"] == "Failed", run.status
    assert (
        "serving.resources.requests.nvidia.com/gpu: Extra inputs are not permitted" in run.status["message"]
    )
    assert run.kube.applied == []


def test_user_env_cannot_widen_gpu_visibility():
    spec = spec_for("mig", serving={"env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]})
    run = reconcile_through(spec, kube=kube_with_the_secret(), cluster=gpu_pool())
    if run.status["phase"] == "Failed":
        assert "NVIDIA_VISIBLE_DEVICES" in run.status["message"]
        return
    for obj in run.kube.applied:
        assert "NVIDIA_VISIBLE_DEVICES" not in json.dumps(obj), obj["kind"]
