"""How many vLLM replicas serve, in the LLMDeployment's status: a DRA pod stays ready while any of
its replicas serves (its router sends only to those), so the status counts the replica containers
that are ready, not ready pods x replicas per pod (issue 13, item 4)."""

from __future__ import annotations

from pathlib import Path

import yaml
from test_badinput_pure import reconcile_through

ROOT = Path(__file__).resolve().parents[2]


def _pod(name: str, labels: dict, ready_replicas: list[bool], *, pod_ready: bool = True) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "team-a", "labels": labels},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if pod_ready else "False"}],
            "initContainerStatuses": [
                {"name": f"vllm-{i}", "ready": ready, "started": True}
                for i, ready in enumerate(ready_replicas)
            ],
            "containerStatuses": [{"name": "router", "ready": pod_ready}],
        },
    }


def test_a_dra_pod_with_one_replica_down_counts_the_replicas_that_serve():
    body = yaml.safe_load((ROOT / "examples/opt-1.3b-mps-dra.yaml").read_text())
    run = reconcile_through(body["spec"], name="opt")
    rec = run.status["recommendation"]
    assert rec["mpsProvider"] == "dra" and rec["replicasPerGPU"] == 2 and rec["replicas"] == 2
    deployment = run.kube.objects[("Deployment", "team-a", "opt")]
    deployment["status"] = {
        "observedGeneration": deployment["metadata"].get("generation"),
        "readyReplicas": 1,
        "updatedReplicas": 1,
        "replicas": 1,
    }
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    run.kube.put(_pod("opt-a", labels, [True, False]))
    again = run.reconciler.reconcile({**_body(body, "opt"), "status": run.status})
    assert again.status["readyReplicas"] == 1 and again.status["ready"] == "1/2"
    assert again.status["phase"] != "Ready"

    run.kube.put(_pod("opt-a", labels, [True, True]))
    healthy = run.reconciler.reconcile({**_body(body, "opt"), "status": again.status})
    assert healthy.status["ready"] == "2/2" and healthy.status["phase"] == "Ready"


def _body(manifest: dict, name: str) -> dict:
    return {
        "apiVersion": "llmpack.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name, "namespace": "team-a", "uid": f"uid-{name}", "generation": 1},
        "spec": manifest["spec"],
    }
