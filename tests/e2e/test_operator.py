"""The product, end to end: kubectl applies an example, the operator profiles (the player runs the
Job's own profiler command as the Job's ServiceAccount), advises, packs, and the deployment is
served on the right fake GPU nodes; `kubectl get llmd` tells the user what was decided."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def get_llmd(kube, namespace, name):
    return kube.get("LLMDeployment", namespace, name)


def wait_phase(kube, player, namespace, name, phase="Ready", timeout=120, play=True):
    """Wait for `phase`, playing any profiling pod on the way; fail fast on an unexpected Failed."""
    deadline = time.monotonic() + timeout
    obj = None
    while time.monotonic() < deadline:
        if play:
            player.play_once(namespace)
        obj = get_llmd(kube, namespace, name)
        status = (obj or {}).get("status") or {}
        current = status.get("observedGeneration") == (obj or {}).get("metadata", {}).get("generation")
        if status.get("phase") == phase and current:
            return obj
        if status.get("phase") == "Failed" and phase != "Failed":
            pytest.fail(f"{name} failed: {status.get('message')}\nplayer: {player.log}")
        time.sleep(0.3)
    pytest.fail(
        f"{name} did not reach {phase} in {timeout}s; "
        f"status: {json.dumps((obj or {}).get('status'), indent=1)}"
        f"\nplayer: {player.log}"
    )


def apply_example(kubectl, namespace, filename):
    kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / filename))
    return yaml.safe_load((EXAMPLES / filename).read_text())["metadata"]["name"]


def serving_pods(kube, namespace, name):
    return kube.list(
        "Pod",
        namespace,
        label_selector=f"llmpack.io/llmdeployment={name},app.kubernetes.io/component=serving",
    )


def test_opt_1_3b_mps_dra_is_packed_on_the_dra_node(operator_process, kube_admin, kubectl, player, namespace):
    name = apply_example(kubectl, namespace, "opt-1.3b-mps-dra.yaml")
    obj = wait_phase(kube_admin, player, namespace, name)
    rec = obj["status"]["recommendation"]
    assert rec["mode"] == "mps" and rec["mpsProvider"] == "dra"
    assert rec["replicasPerGPU"] >= 2, rec
    assert rec["maxNumSeqs"] >= 1
    pods = serving_pods(kube_admin, namespace, name)
    assert pods and all(p["spec"]["nodeName"] == "gpu-dra-a" for p in pods)
    claims = kube_admin.list("ResourceClaim", namespace)
    assert claims and all((c.get("status") or {}).get("allocation") for c in claims)
    # every replica got the advisor's flags
    vllm = [c for c in pods[0]["spec"].get("initContainers", []) if c.get("restartPolicy") == "Always"]
    assert len(vllm) == rec["replicasPerGPU"]
    for container in vllm:
        args = " ".join(container.get("command", []) + container.get("args", []))
        assert f"--max-num-seqs {rec['maxNumSeqs']}" in args
        assert f"--kv-cache-memory-bytes {rec['kvCacheBytes']}" in args
    table = kubectl("get", "llmd", "-n", namespace, name, "-o", "wide").stdout
    header, row = table.strip().splitlines()[:2]
    for column in ("MODEL", "MODE", "B_OPT", "REPLICAS/GPU", "GPUS", "READY", "GAIN", "PHASE"):
        assert column in header
    assert "facebook/opt-1.3b" in row and "mps" in row and "Ready" in row


def test_opt_2_7b_lands_on_mig_slices(operator_process, kube_admin, kubectl, player, namespace):
    name = apply_example(kubectl, namespace, "opt-2.7b-mig.yaml")
    obj = wait_phase(kube_admin, player, namespace, name)
    rec = obj["status"]["recommendation"]
    assert rec["mode"] == "mig" and rec["migProfile"]
    pods = serving_pods(kube_admin, namespace, name)
    assert len(pods) == rec["replicas"]
    for pod in pods:
        assert pod["spec"]["nodeName"] == "gpu-mig-a"
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert limits.get(f"nvidia.com/mig-{rec['migProfile']}") in ("1", 1)


def test_llama_2_7b_exclusive_baseline(operator_process, kube_admin, kubectl, player, namespace):
    kubectl("create", "secret", "generic", "hf-token", "-n", namespace, "--from-literal=token=hf_test")
    name = apply_example(kubectl, namespace, "llama-2-7b-exclusive.yaml")
    obj = wait_phase(kube_admin, player, namespace, name)
    rec = obj["status"]["recommendation"]
    assert rec["mode"] == "exclusive" and rec["replicasPerGPU"] == 1 and rec["gpus"] == 2
    pods = serving_pods(kube_admin, namespace, name)
    assert len(pods) == 2
    assert {p["spec"]["nodeName"] for p in pods} <= {"gpu-h100-a", "gpu-h100-b"}


def test_a_tensor_parallel_replica_holds_its_gpus_and_the_status_counts_them(
    operator_process, kube_admin, kubectl, player, namespace
):
    kubectl("create", "secret", "generic", "hf-token", "-n", namespace, "--from-literal=token=hf_test")
    doc = yaml.safe_load((EXAMPLES / "llama-2-7b-exclusive.yaml").read_text())
    doc["metadata"]["name"] = "llama-tp"
    doc["spec"]["gpu"]["count"] = 4
    doc["spec"]["serving"] = {"extraArgs": ["--tensor-parallel-size", "2"]}
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
    obj = wait_phase(kube_admin, player, namespace, "llama-tp")
    rec = obj["status"]["recommendation"]
    assert (rec["mode"], rec["gpusPerReplica"], rec["replicas"], rec["gpus"]) == ("exclusive", 2, 2, 4)
    assert "one replica per 2 GPUs" in rec["explanation"]
    pods = serving_pods(kube_admin, namespace, "llama-tp")
    assert len(pods) == 2
    for pod in pods:
        (vllm,) = pod["spec"]["containers"]
        assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert "--tensor-parallel-size" in vllm["args"]
    assert obj["status"]["gpus"] == 4, "status.gpus (the scale subresource) counts each pod's GPUs"
    row = kubectl("get", "llmd", "-n", namespace, "llama-tp", "--no-headers").stdout.split()
    assert "4" in row


def test_auto_picks_a_mode_the_cluster_offers_and_explains(
    operator_process, kube_admin, kubectl, player, namespace
):
    name = apply_example(kubectl, namespace, "opt-1.3b-auto.yaml")
    obj = wait_phase(kube_admin, player, namespace, name)
    rec = obj["status"]["recommendation"]
    assert rec["mode"] in ("mps", "mig", "exclusive")
    assert "Modes compared" in rec["explanation"]
    describe = kubectl("describe", "llmd", "-n", namespace, name).stdout
    assert "Advised" in describe and "ProfileReady" in describe


def test_cache_hit_creates_no_job(operator_process, kube_admin, kubectl, player, namespace):
    first = apply_example(kubectl, namespace, "opt-1.3b-mps-dra.yaml")
    wait_phase(kube_admin, player, namespace, first)
    doc = yaml.safe_load((EXAMPLES / "opt-1.3b-mps-dra.yaml").read_text())
    doc["metadata"]["name"] = "opt-second"
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
    obj = wait_phase(kube_admin, player, namespace, "opt-second", play=False)
    assert obj["status"]["profileRef"]["cacheHit"] is True
    jobs = kube_admin.list("Job", namespace)
    assert not [j for j in jobs if "opt-second" in j["metadata"]["name"]]


def test_failed_profiling_ends_in_failed_with_the_reason(
    operator_process, kube_admin, kubectl, player, namespace
):
    doc = yaml.safe_load((EXAMPLES / "opt-1.3b-mps-dra.yaml").read_text())
    doc["metadata"]["name"] = "opt-fails"
    doc["spec"]["profiling"] = {"backoffLimit": 0, "reuseCachedProfile": False}
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not player.play_once(namespace, fail_with="CUDA out of memory"):
        time.sleep(0.3)
    obj = wait_phase(kube_admin, player, namespace, "opt-fails", phase="Failed", play=False)
    message = obj["status"]["message"]
    assert "CUDA out of memory" in message and "profiling Job" in message
    conditions = {c["type"]: c for c in obj["status"]["conditions"]}
    assert conditions["ProfileReady"]["status"] == "False"
    assert conditions["ProfileReady"]["reason"] == "ProfilingFailed"


def test_drift_is_undone_and_delete_removes_everything(
    operator_process, kube_admin, kubectl, player, namespace
):
    name = apply_example(kubectl, namespace, "opt-1.3b-auto.yaml")
    wait_phase(kube_admin, player, namespace, name)
    deployment = kube_admin.get("Deployment", namespace, name)
    wanted = deployment["spec"]["replicas"]
    kubectl("scale", "deployment", name, "-n", namespace, f"--replicas={wanted + 3}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if kube_admin.get("Deployment", namespace, name)["spec"]["replicas"] == wanted:
            break
        time.sleep(0.3)
    assert kube_admin.get("Deployment", namespace, name)["spec"]["replicas"] == wanted
    kubectl("delete", "llmd", name, "-n", namespace, "--wait=true", "--timeout=30s")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        left = [
            o
            for kind in ("Deployment", "Service", "Pod", "ResourceClaimTemplate")
            for o in kube_admin.list(kind, namespace, label_selector=f"llmpack.io/llmdeployment={name}")
        ]
        if not left:
            break
        time.sleep(0.5)
    assert not left, [f"{o.get('kind', '')} {o['metadata']['name']}" for o in left]


def test_ten_deployments_at_once_all_become_ready(operator_process, kube_admin, kubectl, player, namespace):
    base = yaml.safe_load((EXAMPLES / "opt-1.3b-auto.yaml").read_text())
    docs = []
    for i in range(10):
        doc = json.loads(json.dumps(base))
        doc["metadata"]["name"] = f"burst-{i}"
        doc["spec"]["sharing"] = {"mode": "exclusive"}
        doc["spec"]["gpu"]["count"] = 1
        docs.append(yaml.safe_dump(doc))
    kubectl("apply", "-n", namespace, "-f", "-", input="---\n".join(docs))
    for i in range(10):
        wait_phase(kube_admin, player, namespace, f"burst-{i}", timeout=180)


def test_serving_change_rolls_pods_without_profiling_and_workload_change_profiles_again(
    operator_process, kube_admin, kubectl, player, namespace
):
    name = apply_example(kubectl, namespace, "llama-2-7b-exclusive.yaml")
    kubectl("create", "secret", "generic", "hf-token", "-n", namespace, "--from-literal=token=hf_test")
    wait_phase(kube_admin, player, namespace, name)
    before = kube_admin.get("Deployment", namespace, name)["spec"]["template"]["metadata"]["annotations"]
    played = len(player.log)
    kubectl(
        "patch",
        "llmd",
        name,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        # the API server's own flag: serving-only (an engine flag such as --enable-prefix-caching
        # changes what a profile measures and profiles again: tests/unit/test_planning.py)
        '{"spec":{"serving":{"extraArgs":["--served-model-name","llama"]}}}',
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        template = kube_admin.get("Deployment", namespace, name)["spec"]["template"]
        if template["metadata"]["annotations"] != before:
            break
        time.sleep(0.3)
    assert "--served-model-name" in str(template["spec"]["containers"])
    assert not kube_admin.list("Job", namespace), "a serving-only change must not profile again"
    wait_phase(kube_admin, player, namespace, name)  # the player resolves the new pods' token env
    assert len(player.log) == played, "a serving-only change must not measure again"
    kubectl(
        "patch",
        "llmd",
        name,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"workload":{"promptTokens":1024}}}',
    )
    obj = wait_phase(kube_admin, player, namespace, name)
    assert len(player.log) > played, "a workload change must measure a new profile"
    assert obj["status"]["profileRef"]["cacheHit"] is False
    # the longest context Llama-2-7b allows (4,096) that the KV cache for B_opt x 1,280 tokens holds
    assert obj["status"]["recommendation"]["maxModelLen"] == 4096


def wait_message(kube, player, namespace, name, needle, timeout=60):
    """Wait until the status message says `needle`, playing pods (and resolving their env as the
    kubelet would) on the way."""
    deadline = time.monotonic() + timeout
    status = {}
    while time.monotonic() < deadline:
        player.play_once(namespace)
        status = (get_llmd(kube, namespace, name) or {}).get("status") or {}
        if needle in status.get("message", ""):
            return status
        time.sleep(0.3)
    pods = {p["metadata"]["name"]: (p.get("status") or {}).get("phase") for p in kube.list("Pod", namespace)}
    pytest.fail(f"{name}: {needle!r} not in the status in {timeout}s: {json.dumps(status, indent=1)}\n{pods}")


def test_a_missing_token_secret_is_reported_and_creating_it_resumes_profiling(
    operator_process, kube_admin, kubectl, player, namespace
):
    """The operator may not read Secrets: what it reports is the kubelet's word on the profiling
    pod that names one. Creating the Secret is all the user has to do."""
    doc = yaml.safe_load((EXAMPLES / "opt-1.3b-mps-dra.yaml").read_text())
    doc["metadata"]["name"] = "opt-later-secret"
    doc["spec"]["model"]["hfTokenSecretRef"] = {"name": "hf-token-later"}
    doc["spec"]["profiling"] = {"reuseCachedProfile": False}
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
    missing = 'secret "hf-token-later" not found'
    status = wait_message(kube_admin, player, namespace, "opt-later-secret", missing)
    assert status["phase"] == "Profiling", status
    assert "CreateContainerConfigError" in status["message"]
    printed = kubectl("get", "llmd", "opt-later-secret", "-n", namespace, "-o", "wide").stdout
    assert "hf-token-later" in printed, printed

    kubectl("create", "secret", "generic", "hf-token-later", "-n", namespace, "--from-literal=token=hf_x")
    obj = wait_phase(kube_admin, player, namespace, "opt-later-secret")
    assert "not found" not in obj["status"]["message"]


def test_a_rollout_stuck_on_a_missing_secret_is_reported_while_old_replicas_serve(
    operator_process, kube_admin, kubectl, player, namespace
):
    """Pods are replaced one at a time (each holds its GPU): the first new pod cannot start, so
    the rollout stops there and the other GPU's replicas go on serving."""
    doc = yaml.safe_load((EXAMPLES / "opt-1.3b-mps-dra.yaml").read_text())
    doc["spec"]["gpu"]["count"] = 2
    name = doc["metadata"]["name"]
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
    ready = wait_phase(kube_admin, player, namespace, name)
    replicas, per_gpu = ready["status"]["replicas"], ready["status"]["recommendation"]["replicasPerGPU"]
    assert replicas == 2 * per_gpu, ready["status"]
    kubectl(
        "patch",
        "llmd",
        name,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"model":{"hfTokenSecretRef":{"name":"hf-token-gone","key":"token"}}}}',
    )
    status = wait_message(kube_admin, player, namespace, name, 'secret "hf-token-gone" not found')
    assert status["phase"] in ("Deploying", "Degraded"), status
    assert status["readyReplicas"] == per_gpu, "the other GPU's replicas keep serving"
    assert status["ready"] == f"{per_gpu}/{replicas}"
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Progressing"]["status"] == "True"
    assert "CreateContainerConfigError" in conditions["Available"]["message"]


def test_profiling_where_only_dra_offers_whole_gpus_takes_one_through_a_claim(
    operator_process, kube_admin, kubectl, player, namespace
):
    """With the whole-GPU nodes cordoned, the H100s come only through DRA (and as MIG slices):
    the profiling Job claims a whole GPU through DRA, the scheduler allocates it on the DRA node,
    and the claim template goes with the Job."""
    from testbed import NODES

    for node in NODES.whole_gpu:
        kubectl("cordon", node)
    try:
        doc = yaml.safe_load((EXAMPLES / "opt-1.3b-mps-dra.yaml").read_text())
        doc["metadata"]["name"] = "opt-dra-only"
        doc["spec"]["profiling"] = {"reuseCachedProfile": False}
        kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
        deadline = time.monotonic() + 60
        pods = []
        while time.monotonic() < deadline and not pods:
            pods = [
                p
                for p in kube_admin.list(
                    "Pod", namespace, label_selector="app.kubernetes.io/component=profiler"
                )
                if p["spec"].get("nodeName")
            ]
            time.sleep(0.3)
        assert pods, (
            f"no profiling pod scheduled: {get_llmd(kube_admin, namespace, 'opt-dra-only')['status']}"
        )
        assert pods[0]["spec"]["nodeName"] == NODES.dra
        assert pods[0]["spec"]["resourceClaims"], "the GPU comes from a DRA claim"
        assert "nvidia.com/gpu" not in str(pods[0]["spec"]["containers"][0]["resources"])
        wait_phase(kube_admin, player, namespace, "opt-dra-only")
        left = kube_admin.list(
            "ResourceClaimTemplate", namespace, label_selector="app.kubernetes.io/component=profiler"
        )
        assert not left, "the profiling claim template goes with its Job"
    finally:
        for node in NODES.whole_gpu:
            kubectl("uncordon", node)
