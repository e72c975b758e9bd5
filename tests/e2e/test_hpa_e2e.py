"""Autoscaling end to end with the real HPA controller of kube-controller-manager.

The testbed serves custom.metrics.k8s.io through an APIService (hack/testbed/custom_metrics.py:
per-pod values this test sets stand in for a metrics adapter under load); the HPA the operator
renders, the LLMDeployment's scale subresource, the operator and the Deployments are the real ones.
Raise the metric: the HPA scales the LLMDeployment up and the new GPUs' pods become Ready; lower it:
back to minGPUs. Without autoscaling, `kubectl scale llmd` moves the GPU count the same way.
"""

from __future__ import annotations

import time

import pytest
import yaml
from test_operator import EXAMPLES, serving_pods, wait_phase
from testbed import HPA_SYNC_PERIOD_SECONDS

from llmpack.render.plan import DEFAULT_AUTOSCALING_METRIC

pytestmark = pytest.mark.e2e
METRIC = DEFAULT_AUTOSCALING_METRIC  # the operator runs with the default --autoscaling-metric
# React within one HPA period both ways (the defaults wait 5 min before scaling down).
FAST = {
    direction: {
        "stabilizationWindowSeconds": 0,
        "policies": [{"type": "Percent", "value": 900, "periodSeconds": 1}],
    }
    for direction in ("scaleUp", "scaleDown")
}


@pytest.fixture(scope="module")
def custom_metrics(testbed):
    from custom_metrics import CustomMetrics

    metrics = CustomMetrics(testbed).start()
    yield metrics
    metrics.stop()


def apply(kubectl, namespace: str, name: str, **spec) -> None:
    doc = yaml.safe_load((EXAMPLES / "opt-1.3b-mps-dra.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"].update(spec)
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))


def wait_for(what: str, probe, timeout: float = 120, period: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(period)
    pytest.fail(f"{what}: not within {timeout} s")


def wanted(kube, namespace: str, name: str) -> int:
    """spec.gpu.count: what the HPA (or kubectl scale) last asked for."""
    return kube.get("LLMDeployment", namespace, name)["spec"]["gpu"]["count"]


def hpa_active(kube, namespace: str, name: str) -> bool:
    conditions = (kube.get("HorizontalPodAutoscaler", namespace, name).get("status") or {}).get("conditions")
    return any(c["type"] == "ScalingActive" and c["status"] == "True" for c in conditions or [])


def live_pods(kube, namespace: str, name: str) -> list[dict]:
    return [p for p in serving_pods(kube, namespace, name) if not p["metadata"].get("deletionTimestamp")]


def serving_at(kube, namespace: str, name: str, gpus: int) -> dict | None:
    """The LLMDeployment once it serves on `gpus` GPUs with every replica ready, else None."""
    obj = kube.get("LLMDeployment", namespace, name)
    status = obj.get("status") or {}
    if (
        obj["spec"]["gpu"]["count"] == gpus
        and status.get("observedGeneration") == obj["metadata"]["generation"]
        and status.get("phase") == "Ready"
        and status.get("gpus") == gpus
    ):
        return obj
    return None


def test_the_hpa_scales_gpus_up_on_load_and_back_down_to_min(
    operator_process, kube_admin, kubectl, player, namespace, custom_metrics
):
    name = "auto"
    custom_metrics.set(namespace, METRIC, 0)
    apply(kubectl, namespace, name, autoscaling={"minGPUs": 1, "maxGPUs": 3, "behavior": FAST})
    obj = wait_phase(kube_admin, player, namespace, name)
    rec = obj["status"]["recommendation"]
    assert obj["status"]["gpus"] == 1 and obj["status"]["selector"]
    hpa = kube_admin.get("HorizontalPodAutoscaler", namespace, name)
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "LLMDeployment"
    target = 0.8 * rec["concurrencyPerGPU"]
    # the HPA has read the metric (0) once: it is active before the load changes
    wait_for("the HPA active", lambda: hpa_active(kube_admin, namespace, name), timeout=180)

    # load of 2.5 GPUs at the target: the HPA asks for ceil(2.5) = 3
    changed = time.time()
    custom_metrics.set(namespace, METRIC, 2.5 * target)
    wait_for(
        "the HPA scales the LLMDeployment",
        lambda: wanted(kube_admin, namespace, name) == 3,
    )
    decided = time.time()
    wait_for("3 GPUs serving", lambda: serving_at(kube_admin, namespace, name, 3))
    ready = time.time()
    pods = [
        p for p in serving_pods(kube_admin, namespace, name) if not p["metadata"].get("deletionTimestamp")
    ]
    assert len(pods) == 3  # DRA: one pod per GPU
    hpa = kube_admin.get("HorizontalPodAutoscaler", namespace, name)
    assert hpa["status"]["desiredReplicas"] == 3
    up = (decided - changed, ready - changed)

    changed = time.time()
    custom_metrics.set(namespace, METRIC, 0)
    wait_for(
        "the HPA scales down",
        lambda: wanted(kube_admin, namespace, name) == 1,
    )
    decided = time.time()
    wait_for("back to minGPUs", lambda: serving_at(kube_admin, namespace, name, 1))
    wait_for("the other GPUs' pods gone", lambda: len(serving_pods(kube_admin, namespace, name)) == 1)
    ready = time.time()
    down = (decided - changed, ready - changed)
    period = HPA_SYNC_PERIOD_SECONDS
    print(
        f"\nHPA sync period {period} s; metric raised -> HPA scaled to 3 GPUs {up[0]:.1f} s "
        f"({up[0] / period:.1f} periods) -> 3 pods Ready {up[1]:.1f} s ({up[1] / period:.1f}); "
        f"metric lowered -> scaled to 1 {down[0]:.1f} s -> extra pods gone {down[1]:.1f} s"
    )
    assert up[0] < 4 * period + 10 and down[0] < 4 * period + 10
    assert custom_metrics.queries_since(changed, namespace), "the HPA read the testbed's custom metrics"


def test_kubectl_scale_moves_the_gpus_without_autoscaling(
    operator_process, kube_admin, kubectl, player, namespace
):
    name = "manual"
    apply(kubectl, namespace, name)
    wait_phase(kube_admin, player, namespace, name)
    first = {p["metadata"]["name"] for p in live_pods(kube_admin, namespace, name)}
    jobs = kube_admin.list("Job", namespace)
    kubectl("scale", "llmd", name, "-n", namespace, "--replicas", "2")
    obj = wait_for("2 GPUs serving", lambda: serving_at(kube_admin, namespace, name, 2))
    rec = obj["status"]["recommendation"]
    pods = {p["metadata"]["name"] for p in live_pods(kube_admin, namespace, name)}
    assert first < pods and len(pods) == 2  # the first GPU's pod kept serving: nothing rolled
    assert obj["status"]["ready"] == f"{2 * rec['replicasPerGPU']}/{2 * rec['replicasPerGPU']}"
    assert kube_admin.list("Job", namespace) == jobs == []  # scaling never profiles
    scale = kube_admin.request(
        "GET", f"/apis/llmpack.io/v1alpha1/namespaces/{namespace}/llmdeployments/{name}/scale"
    )
    assert (scale["spec"]["replicas"], scale["status"]["replicas"]) == (2, 2)
    assert scale["status"]["selector"] == obj["status"]["selector"]
    kubectl("scale", "llmd", name, "-n", namespace, "--replicas", "1")
    wait_for("back to 1 GPU", lambda: serving_at(kube_admin, namespace, name, 1))
    wait_for("the second GPU's pod gone", lambda: len(live_pods(kube_admin, namespace, name)) == 1)


def test_with_several_pods_per_gpu_the_hpa_reads_the_total_and_scales_gpus(
    operator_process, kube_admin, kubectl, player, namespace, custom_metrics
):
    """Device-plugin MPS runs one replica per pod, k pods per GPU: the HPA reads the LLMDeployment's
    total through external.metrics.k8s.io and still answers in GPUs (render/autoscaling.py)."""
    name = "shared"
    custom_metrics.set(namespace, METRIC, 0)
    sharing = {"mode": "mps", "mpsProvider": "devicePlugin"}
    scaling = {"minGPUs": 1, "maxGPUs": 2, "behavior": FAST}
    # a batch whose replica fits the device plugin's 1/4-GPU MPS slices of the testbed's MPS node
    apply(kubectl, namespace, name, sharing=sharing, advisor={"maxNumSeqs": 64}, autoscaling=scaling)
    obj = wait_phase(kube_admin, player, namespace, name)
    rec = obj["status"]["recommendation"]
    k = rec["replicasPerGPU"]
    assert rec["mpsProvider"] == "devicePlugin" and k > 1 and len(live_pods(kube_admin, namespace, name)) == k
    (metric,) = kube_admin.get("HorizontalPodAutoscaler", namespace, name)["spec"]["metrics"]
    assert metric["type"] == "External"
    wait_for("the HPA active", lambda: hpa_active(kube_admin, namespace, name), timeout=180)

    # 1.8 GPUs' worth of sequences in flight, spread over the k pods of the one GPU
    custom_metrics.set(namespace, METRIC, 1.8 * 0.8 * rec["concurrencyPerGPU"] / k)
    wait_for("the HPA scales to 2 GPUs", lambda: wanted(kube_admin, namespace, name) == 2)
    obj = wait_for("2 GPUs serving", lambda: serving_at(kube_admin, namespace, name, 2))
    assert len(live_pods(kube_admin, namespace, name)) == 2 * k  # whole GPUs' worth of pods
    assert obj["status"]["ready"] == f"{2 * k}/{2 * k}"
    custom_metrics.set(namespace, METRIC, 0)
    wait_for("back to 1 GPU", lambda: wanted(kube_admin, namespace, name) == 1)
    wait_for("1 GPU serving", lambda: serving_at(kube_admin, namespace, name, 1))
