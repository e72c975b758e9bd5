"""A tenant with the built-in `edit` role in its own namespace, and nothing else, against the
running operator: what it can write (its profiling Job's result ConfigMap) decides nothing for
another namespace, and a result that claims another measurement is refused with the reason."""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml
from player import COMPLETE_ANNOTATION
from test_operator import EXAMPLES, get_llmd, wait_phase

from llmpack.api.llmdeployment import LLMDeploymentSpec
from llmpack.controller.client import KubeClient, KubeError
from llmpack.profiler.facts import ArchitectureOverride, ProfileRequest
from llmpack.profiler.simulated import SimulatedBackend
from llmpack.render.plan import PROFILE_DATA_KEY

pytestmark = pytest.mark.e2e

TENANT = "tenant"


def spec() -> dict[str, Any]:
    body = yaml.safe_load((EXAMPLES / "opt-1.3b-auto.yaml").read_text())
    return {**body["spec"], "sharing": {"mode": "exclusive"}, "gpu": {**body["spec"]["gpu"], "count": 1}}


def llmd(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "llmpack.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name},
        "spec": spec(),
    }


def tenant_with_edit(kube_admin: KubeClient, testbed, admin_api, namespace: str) -> KubeClient:
    """A ServiceAccount bound to the built-in `edit` ClusterRole in `namespace` only."""
    import kube

    kube_admin.apply(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": TENANT, "namespace": namespace}}
    )
    kube_admin.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "tenant-edit", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "ServiceAccount", "name": TENANT, "namespace": namespace}],
        }
    )
    return KubeClient(kube.service_account_client(testbed, admin_api, namespace, TENANT))


def running_job(kube_admin: KubeClient, namespace: str, name: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = kube_admin.list("Job", namespace, label_selector=f"llmpack.io/llmdeployment={name}")
        pods = kube_admin.list("Pod", namespace, label_selector=f"llmpack.io/llmdeployment={name}")
        if jobs and any((p.get("status") or {}).get("phase") == "Running" for p in pods):
            return jobs[0]
        time.sleep(0.3)
    pytest.fail(f"no running profiling Job for {namespace}/{name}")


def arg(job: dict[str, Any], flag: str) -> str:
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    return args[args.index(flag) + 1]


def forged_profile(*, model: str, gpu: str, key: str) -> str:
    """What a tenant could publish: a well-formed profile of its own making."""
    parsed = LLMDeploymentSpec.model_validate({**spec(), "model": {"name": model}, "gpu": {"product": gpu}})
    request = ProfileRequest(
        model=model,
        gpu_product=gpu,
        dtype=parsed.model.dtype,
        max_model_len=parsed.workload_tokens(),
        prompt_tokens=parsed.workload.prompt_tokens,
        output_tokens=parsed.workload.output_tokens,
        architecture=ArchitectureOverride(),
    )
    backend = SimulatedBackend(request)
    backend.start()
    profile = backend.profile([backend.measure(b) for b in (1, 8)], [])
    return profile.model_copy(update={"key": key}).model_dump_json()


def publish_as_tenant_and_finish(
    tenant: KubeClient, kube_admin: KubeClient, namespace: str, job: dict[str, Any], raw: str
) -> None:
    """The tenant writes the Job's result; the Job's pod then exits 0 without running the profiler."""
    result = arg(job, "--result-configmap")
    tenant.merge_patch("ConfigMap", namespace, result, {"data": {PROFILE_DATA_KEY: raw}})
    for pod in kube_admin.list("Pod", namespace, label_selector=f"job-name={job['metadata']['name']}"):
        kube_admin.merge_patch(
            "Pod",
            namespace,
            pod["metadata"]["name"],
            {"metadata": {"annotations": {COMPLETE_ANNOTATION: "true"}}},
        )


def wait_status(kube_admin, namespace: str, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = (get_llmd(kube_admin, namespace, name) or {}).get("status") or {}
        if status.get("phase") == phase:
            return status
        time.sleep(0.3)
    pytest.fail(f"{namespace}/{name} not {phase} in {timeout}s: {status}")


@pytest.fixture
def other_namespace(admin_api, request):
    import kube

    name = kube.create_namespace(admin_api, f"tenant-b-{int(time.time() * 1000) % 100000}")
    request.addfinalizer(lambda: kube.delete_namespace(admin_api, name))
    return name


def test_an_edit_user_cannot_read_or_write_the_profile_cache(
    operator_process, kube_admin, testbed, admin_api, namespace
):
    tenant = tenant_with_edit(kube_admin, testbed, admin_api, namespace)
    for call in (
        lambda: tenant.list("ConfigMap", "llmpack-system"),
        lambda: tenant.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "x", "namespace": "llmpack-system"},
            }
        ),
    ):
        with pytest.raises(KubeError) as refused:
            call()
        assert refused.value.status == 403


def test_a_forged_result_of_another_model_and_gpu_is_refused_with_the_reason(
    operator_process, kube_admin, kubectl, testbed, admin_api, namespace
):
    tenant = tenant_with_edit(kube_admin, testbed, admin_api, namespace)
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(llmd("victim")))
    job = running_job(kube_admin, namespace, "victim")
    forged = forged_profile(model="facebook/opt-2.7b", gpu="NVIDIA-L4", key=arg(job, "--profile-key"))
    publish_as_tenant_and_finish(tenant, kube_admin, namespace, job, forged)
    status = wait_status(kube_admin, namespace, "victim", "Failed")
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["ProfileReady"]["reason"] == "ProfileMismatch", conditions
    message = status["message"]
    assert "model 'facebook/opt-2.7b'" in message and "GPU 'NVIDIA-L4'" in message and "not used" in message
    assert not [
        cm
        for cm in kube_admin.list("ConfigMap", "llmpack-system")
        if arg(job, "--profile-key")[:40] in cm["metadata"]["name"]
    ], "nothing was cached"


def test_a_forged_result_decides_for_its_own_namespace_only(
    operator_process, kube_admin, kubectl, player, testbed, admin_api, namespace, other_namespace
):
    """The issue's attack: the forged profile claims exactly what the Job measures, so namespace A
    takes it (A's tenant harms only A); the same spec in namespace B is measured by a Job of its
    own and decided from that, not from A's forgery."""
    tenant = tenant_with_edit(kube_admin, testbed, admin_api, namespace)
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(llmd("chat")))
    job = running_job(kube_admin, namespace, "chat")
    parsed = LLMDeploymentSpec.model_validate(spec())
    forged = forged_profile(model=parsed.model.name, gpu=parsed.gpu.product, key=arg(job, "--profile-key"))
    publish_as_tenant_and_finish(tenant, kube_admin, namespace, job, forged)
    in_a = wait_phase(kube_admin, player, namespace, "chat", play=False)
    assert in_a["status"]["profileRef"]["key"] == arg(job, "--profile-key")

    kubectl("apply", "-n", other_namespace, "-f", "-", input=yaml.safe_dump(llmd("chat")))
    job_b = running_job(kube_admin, other_namespace, "chat")
    assert arg(job_b, "--profile-key") != arg(job, "--profile-key"), "a key of its own"
    in_b = wait_phase(kube_admin, player, other_namespace, "chat")
    assert in_b["status"]["profileRef"]["cacheHit"] is False
    assert in_b["status"]["profileRef"]["key"] == arg(job_b, "--profile-key")
    # the forgery measured batches 1 and 8 only; B's own profile, the example's candidates
    assert in_a["status"]["recommendation"]["maxNumSeqs"] <= 8
    assert in_b["status"]["recommendation"]["maxNumSeqs"] > 8
