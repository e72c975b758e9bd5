"""spec.serving.inferencePool on the testbed, with the Gateway API Inference Extension's own
InferencePool CRD (inference.networking.k8s.io/v1, the version hack/testbed/versions.env pins):
refused with what to install while the CRD is absent, applied as soon as it is installed (the
API server validates it against the real schema and its CEL rules), every replica port of every
serving pod an endpoint, following the pods when the LLMDeployment scales and repacks, pruned
when the spec drops it."""

from __future__ import annotations

import json
import time

import pytest
import yaml

pytestmark = pytest.mark.e2e

NAME = "pooled"


def spec(**serving_pool: object) -> dict:
    return {
        "apiVersion": "llmpack.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"name": "facebook/opt-1.3b"},
            "sharing": {"mode": "mps", "mpsProvider": "dra", "maxReplicasPerGPU": 4},
            "advisor": {"replicasPerGPU": 3},
            "gpu": {"product": "NVIDIA-H100-80GB-HBM3", "count": 1},
            "profiling": {"backend": "simulated"},
            "serving": {"port": 8000, **serving_pool},
        },
    }


def wait_for(kube, player, namespace, done, timeout, what):
    deadline = time.monotonic() + timeout
    obj: dict = {}
    while time.monotonic() < deadline:
        player.play_once(namespace)
        obj = kube.get("LLMDeployment", namespace, NAME) or {}
        if done(obj):
            return obj
        time.sleep(0.5)
    pytest.fail(f"{NAME}: not {what} in {timeout} s: {json.dumps(obj.get('status'), indent=1)}")


def current(obj: dict, phase: str) -> bool:
    status = obj.get("status") or {}
    return status.get("phase") == phase and status.get("observedGeneration") == obj["metadata"]["generation"]


def pool_and_pods(kube, namespace):
    pool = kube.request(
        "GET", f"/apis/inference.networking.k8s.io/v1/namespaces/{namespace}/inferencepools/{NAME}"
    )
    selector = ",".join(f"{k}={v}" for k, v in pool["spec"]["selector"]["matchLabels"].items())
    pods = [
        p
        for p in kube.list("Pod", namespace, label_selector=selector)
        if not p["metadata"].get("deletionTimestamp")
    ]
    return pool, pods


def test_an_inference_pool_reaches_every_replica_and_follows_the_pods(
    operator_process, kube_admin, kubectl, testbed, player, namespace
):
    from testbed import inference_pool_crd

    crd = inference_pool_crd(testbed.bin_dir)
    apply = {"inferencePool": {"endpointPickerRef": {"name": "vllm-epp", "port": 9002}}}
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(spec(**apply)))
    refused = wait_for(
        kube_admin,
        player,
        namespace,
        lambda o: "InferencePool" in ((o.get("status") or {}).get("message") or ""),
        120,
        "refused for the missing CRD",
    )
    message = refused["status"]["message"]
    assert (
        "no inference.networking.k8s.io/v1 InferencePool is served (404 page not found). Install the "
        in message
    )
    assert "Gateway API Inference Extension's CRDs), or remove what in the spec asks for it" in message, (
        message
    )

    kubectl("apply", "--server-side", "-f", str(crd))
    kubectl(
        "wait",
        "--for=condition=Established",
        "crd/inferencepools.inference.networking.k8s.io",
        "--timeout=30s",
    )
    ready = wait_for(
        kube_admin, player, namespace, lambda o: current(o, "Ready"), 120, "Ready once the CRD is in"
    )
    rec = ready["status"]["recommendation"]
    assert rec["replicasPerGPU"] == 3
    pool, pods = pool_and_pods(kube_admin, namespace)
    assert [p["number"] for p in pool["spec"]["targetPorts"]] == [8001, 8002, 8003]
    assert pool["spec"]["endpointPickerRef"] == {
        "group": "",
        "kind": "Service",
        "name": "vllm-epp",
        "port": {"number": 9002},
        "failureMode": "FailClose",
    }
    assert len(pods) == 1
    replicas = [c for c in pods[0]["spec"]["initContainers"] if c["name"].startswith("vllm-")]
    # each replica an endpoint: it listens on the pod IP, on the port the pool names
    assert sorted(c["ports"][0]["containerPort"] for c in replicas) == [8001, 8002, 8003]
    assert all("127.0.0.1" not in c["args"] for c in replicas)

    kubectl("scale", "llmd", NAME, "-n", namespace, "--replicas=2")
    wait_for(
        kube_admin,
        player,
        namespace,
        lambda o: current(o, "Ready") and o["status"].get("gpus") == 2,
        120,
        "Ready on 2 GPUs",
    )
    _, pods = pool_and_pods(kube_admin, namespace)
    assert len(pods) == 2, "the pool's selector takes in the new pod"

    repacked = spec(**apply)
    repacked["spec"]["gpu"]["count"] = 2
    repacked["spec"]["advisor"]["replicasPerGPU"] = 2
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(repacked))
    wait_for(
        kube_admin,
        player,
        namespace,
        lambda o: current(o, "Ready") and o["status"]["recommendation"]["replicasPerGPU"] == 2,
        120,
        "Ready with 2 replicas per GPU",
    )
    pool, _ = pool_and_pods(kube_admin, namespace)
    assert [p["number"] for p in pool["spec"]["targetPorts"]] == [8001, 8002]

    dropped = {**repacked, "spec": {**repacked["spec"], "serving": {"port": 8000}}}
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(dropped))
    wait_for(kube_admin, player, namespace, lambda o: current(o, "Ready"), 120, "Ready without the pool")
    deadline = time.monotonic() + 30
    while kubectl("get", "inferencepools", "-n", namespace, "-o", "name").stdout.strip():
        assert time.monotonic() < deadline, "the InferencePool was not pruned"
        time.sleep(0.5)
