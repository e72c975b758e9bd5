"""The local control plane does what the operator's tests rely on: each test proves one component
(controller-manager, scheduler, kwok, RBAC, DRA) does its job against the fake GPU nodes."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import testbed as testbed_lib
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

import kube

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

NODES = testbed_lib.NODES
ROOT = Path(__file__).resolve().parents[2]
IMAGE = "registry.invalid/llmpack/placeholder:0"  # never pulled: kwok runs no containers


def container(resources: dict | None = None) -> dict:
    c = {"name": "main", "image": IMAGE}
    if resources:
        c["resources"] = {"limits": resources}
    return c


def pod_spec(resources: dict | None = None, **extra) -> dict:
    return {"containers": [container(resources)], "terminationGracePeriodSeconds": 0, **extra}


def create_pod(api, ns: str, name: str, resources: dict | None = None, **spec) -> None:
    client.CoreV1Api(api).create_namespaced_pod(
        ns, {"metadata": {"name": name}, "spec": pod_spec(resources, **spec)}
    )


def running_pod(api, ns: str, name: str, timeout: float = 30):
    core = client.CoreV1Api(api)
    return kube.wait_for(
        lambda: (p := core.read_namespaced_pod(name, ns)).status.phase == "Running" and p,
        timeout=timeout,
        what=f"pod {name} Running",
    )


def job(name: str, annotations: dict | None = None) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": annotations or {}},
                "spec": pod_spec(restartPolicy="Never"),
            },
        },
    }


def test_apiserver_reports_the_pinned_version(testbed):
    versions = dict(
        line.split("=", 1)
        for line in (ROOT / "hack/testbed/versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert testbed.get("/version")["gitVersion"] == versions["K8S_VERSION"]


def test_fake_gpu_nodes_advertise_their_gpus(admin_api):
    nodes = {n.metadata.name: n for n in client.CoreV1Api(admin_api).list_node().items}
    assert set(NODES.all) <= set(nodes)
    for name in NODES.whole_gpu:
        assert nodes[name].status.allocatable["nvidia.com/gpu"] == "8"
        assert nodes[name].metadata.labels["nvidia.com/gpu.product"] == testbed_lib.H100
    mig = nodes[NODES.mig]
    assert mig.metadata.labels["nvidia.com/mig.strategy"] == "mixed"
    assert {k: v for k, v in mig.status.allocatable.items() if k.startswith("nvidia.com/mig-")} == {
        "nvidia.com/mig-1g.10gb": "7",
        "nvidia.com/mig-2g.20gb": "2",
        "nvidia.com/mig-3g.40gb": "1",
    }
    mps = nodes[NODES.mps]
    assert mps.metadata.labels["nvidia.com/gpu.sharing-strategy"] == "mps"
    assert mps.metadata.labels["nvidia.com/gpu.product"] == f"{testbed_lib.H100}-SHARED"
    replicas, gpus = (int(mps.metadata.labels[f"nvidia.com/gpu.{k}"]) for k in ("replicas", "count"))
    assert int(mps.status.allocatable["nvidia.com/gpu"]) == replicas * gpus
    assert "nvidia.com/gpu" not in nodes[NODES.dra].status.allocatable
    for name in NODES.all:
        assert kube.condition(nodes[name], "Ready") == "True", f"{name} is not Ready (kwok heartbeats)"


def test_deployment_pods_run_on_a_whole_gpu_node(admin_api, namespace):
    apps = client.AppsV1Api(admin_api)
    labels = {"app": "llm"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "llm"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": pod_spec(
                        {"nvidia.com/gpu": "1"}, nodeSelector={"nvidia.com/gpu.product": testbed_lib.H100}
                    ),
                },
            },
        },
    )
    kube.wait_for(
        lambda: apps.read_namespaced_deployment("llm", namespace).status.ready_replicas == 2,
        what="Deployment llm to have 2 ready replicas",
    )
    pods = kube.pods(admin_api, namespace, "app=llm")
    assert [p.status.phase for p in pods] == ["Running", "Running"]
    assert {p.spec.node_name for p in pods} <= set(NODES.whole_gpu)
    assert all(p.status.pod_ip for p in pods)


def test_job_pod_completes_and_job_is_complete(admin_api, namespace):
    batch = client.BatchV1Api(admin_api)
    batch.create_namespaced_job(namespace, job("ok"))
    kube.wait_for(
        lambda: kube.condition(batch.read_namespaced_job("ok", namespace), "Complete") == "True",
        what="Job ok Complete",
    )
    assert [p.status.phase for p in kube.pods(admin_api, namespace, "job-name=ok")] == ["Succeeded"]


def test_pod_annotated_to_fail_makes_its_job_fail(admin_api, namespace):
    batch = client.BatchV1Api(admin_api)
    batch.create_namespaced_job(
        namespace,
        job(
            "doomed",
            {testbed_lib.FAIL_ANNOTATION: "true", "llmpack.io/testbed-fail-message": "out of memory"},
        ),
    )
    kube.wait_for(
        lambda: kube.condition(batch.read_namespaced_job("doomed", namespace), "Failed") == "True",
        what="Job doomed Failed",
    )
    (pod,) = kube.pods(admin_api, namespace, "job-name=doomed")
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.message) == (1, "out of memory")


@pytest.mark.parametrize(
    "hold",
    [
        *({"labels": {testbed_lib.HOLD_LABEL: c}} for c in testbed_lib.HOLD_COMPONENTS),
        {"annotations": {testbed_lib.HOLD_ANNOTATION: "true"}},
    ],
    ids=[*(f"{c}-label" for c in testbed_lib.HOLD_COMPONENTS), "hold-annotation"],
)
def test_held_job_pod_runs_until_annotated_complete(admin_api, namespace, hold):
    batch, core = client.BatchV1Api(admin_api), client.CoreV1Api(admin_api)
    held = job("held")
    held["spec"]["template"]["metadata"].update(hold)
    batch.create_namespaced_job(namespace, held)
    pod = kube.wait_for(
        lambda: next(
            (p for p in kube.pods(admin_api, namespace, "job-name=held") if p.status.phase == "Running"), None
        ),
        what="the held pod to run",
    )
    time.sleep(1.5)  # kwok completes an ordinary Job pod well within this
    assert core.read_namespaced_pod(pod.metadata.name, namespace).status.phase == "Running"
    assert kube.condition(batch.read_namespaced_job("held", namespace), "Complete") is None
    core.patch_namespaced_pod(
        pod.metadata.name, namespace, {"metadata": {"annotations": {testbed_lib.COMPLETE_ANNOTATION: "true"}}}
    )
    kube.wait_for(
        lambda: kube.condition(batch.read_namespaced_job("held", namespace), "Complete") == "True",
        what="Job held Complete",
    )
    assert core.read_namespaced_pod(pod.metadata.name, namespace).status.phase == "Succeeded"


def test_restarted_kwok_writes_the_pod_status_its_predecessor_lost(testbed, admin_api, namespace):
    """kwok writes a pod's status only on a watch event and gives up a write that fails with an
    error it does not retry (HTTP 500 when etcd is killed mid-write, EOF when the API server is),
    so restarting etcd or the API server restarts kwok too (Testbed.resync_kubelets). The lost
    write is played here by annotating a held pod complete while kwok is down."""
    batch, core = client.BatchV1Api(admin_api), client.CoreV1Api(admin_api)
    held = job("lost")
    held["spec"]["template"]["metadata"]["annotations"] = {testbed_lib.HOLD_ANNOTATION: "true"}
    batch.create_namespaced_job(namespace, held)
    pod = kube.wait_for(
        lambda: next(
            (p for p in kube.pods(admin_api, namespace, "job-name=lost") if p.status.phase == "Running"), None
        ),
        what="the held pod to run",
    )
    testbed.kill("kwok")
    try:
        core.patch_namespaced_pod(
            pod.metadata.name,
            namespace,
            {"metadata": {"annotations": {testbed_lib.COMPLETE_ANNOTATION: "true"}}},
        )
        time.sleep(1.5)
        assert core.read_namespaced_pod(pod.metadata.name, namespace).status.phase == "Running"
    finally:
        testbed.resync_kubelets()
    kube.wait_for(
        lambda: kube.condition(batch.read_namespaced_job("lost", namespace), "Complete") == "True",
        timeout=20,
        what="Job lost Complete after kwok's restart",
    )


def test_pod_asking_for_nine_gpus_stays_pending(admin_api, namespace):
    create_pod(
        admin_api,
        namespace,
        "too-big",
        {"nvidia.com/gpu": "9"},
        nodeSelector={"nvidia.com/gpu.product": testbed_lib.H100},
    )
    core = client.CoreV1Api(admin_api)

    def unschedulable():
        pod = core.read_namespaced_pod("too-big", namespace)
        cond = next((c for c in pod.status.conditions or [] if c.type == "PodScheduled"), None)
        return cond is not None and cond.status == "False" and pod

    pod = kube.wait_for(unschedulable, what="the scheduler to reject pod too-big")
    message = next(c.message for c in pod.status.conditions if c.type == "PodScheduled")
    assert "Insufficient nvidia.com/gpu" in message
    assert pod.status.phase == "Pending" and pod.spec.node_name is None


def test_pod_asking_for_a_mig_slice_lands_on_the_mig_node(admin_api, namespace):
    create_pod(admin_api, namespace, "slice", {"nvidia.com/mig-1g.10gb": "1"})
    assert running_pod(admin_api, namespace, "slice").spec.node_name == NODES.mig


def test_pod_asking_for_an_mps_share_lands_on_the_mps_node(admin_api, namespace):
    product = f"{testbed_lib.H100}-SHARED"
    create_pod(
        admin_api,
        namespace,
        "share",
        {"nvidia.com/gpu": "1"},
        nodeSelector={"nvidia.com/gpu.product": product},
    )
    assert running_pod(admin_api, namespace, "share").spec.node_name == NODES.mps


def test_resource_claim_from_template_is_allocated_on_the_dra_node(admin_api, namespace):
    objs = kube.custom(admin_api)
    objs.create_namespaced_custom_object(
        "resource.k8s.io",
        "v1",
        namespace,
        "resourceclaimtemplates",
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaimTemplate",
            "metadata": {"name": "one-gpu"},
            "spec": {
                "spec": {
                    "devices": {
                        "requests": [
                            {
                                "name": "gpu",
                                "exactly": {
                                    "deviceClassName": testbed_lib.DRA_DRIVER,
                                    "selectors": [
                                        {
                                            "cel": {
                                                "expression": "device.capacity['gpu.nvidia.com'].memory"
                                                ".compareTo(quantity('40Gi')) >= 0"
                                            }
                                        }
                                    ],
                                },
                            }
                        ]
                    }
                }
            },
        },
    )
    client.CoreV1Api(admin_api).create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "claimer"},
            "spec": {
                "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": "one-gpu"}],
                "containers": [{**container(), "resources": {"claims": [{"name": "gpu"}]}}],
                "terminationGracePeriodSeconds": 0,
            },
        },
    )
    pod = running_pod(admin_api, namespace, "claimer")
    assert pod.spec.node_name == NODES.dra
    (claim_status,) = pod.status.resource_claim_statuses
    claim = objs.get_namespaced_custom_object(
        "resource.k8s.io", "v1", namespace, "resourceclaims", claim_status.resource_claim_name
    )
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    assert result["driver"] == testbed_lib.DRA_DRIVER
    assert result["pool"] == NODES.dra
    assert result["device"].startswith("gpu-")
    assert [r["name"] for r in claim["status"]["reservedFor"]] == ["claimer"]


def test_deleting_a_deployment_collects_its_replicasets_and_pods(admin_api, namespace):
    apps = client.AppsV1Api(admin_api)
    labels = {"app": "gone"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "gone"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": pod_spec()},
            },
        },
    )
    kube.wait_for(lambda: apps.read_namespaced_deployment("gone", namespace).status.ready_replicas == 1)
    apps.delete_namespaced_deployment("gone", namespace)  # background propagation: the GC's job
    kube.wait_for(
        lambda: not apps.list_namespaced_replica_set(namespace).items,
        what="the garbage collector to delete the ReplicaSet",
    )
    # kwok's pod-delete stage plays the kubelet that confirms the deletion.
    kube.wait_for(lambda: not kube.pods(admin_api, namespace), what="the pods to be deleted")


def test_deleting_an_owner_collects_its_dependents(admin_api, namespace):
    core = client.CoreV1Api(admin_api)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "dependent", "ownerReferences": [ref]}}
    )
    core.delete_namespaced_config_map("owner", namespace)

    def dependent_gone() -> bool:
        try:
            core.read_namespaced_config_map("dependent", namespace)
        except ApiException as e:
            return e.status == 404
        return False

    kube.wait_for(dependent_gone, what="the garbage collector to delete ConfigMap dependent")


def test_service_account_needs_a_role_binding(testbed, admin_api, namespace, kubectl, tmp_path):
    core = client.CoreV1Api(admin_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    as_reader = client.CoreV1Api(kube.service_account_client(testbed, admin_api, namespace, "reader"))
    with pytest.raises(ApiException) as denied:
        as_reader.list_namespaced_config_map(namespace)
    assert denied.value.status == 403
    reader_kubeconfig = kube.service_account_kubeconfig(
        testbed, admin_api, namespace, "reader", tmp_path / "reader.kubeconfig"
    )
    result = kubectl("get", "configmaps", "-n", namespace, check=False, kubeconfig=reader_kubeconfig)
    assert result.returncode != 0 and "forbidden" in result.stderr

    rbac = client.RbacAuthorizationV1Api(admin_api)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "read-configmaps"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    names = kube.wait_for(
        lambda: [c.metadata.name for c in as_reader.list_namespaced_config_map(namespace).items],
        what="the RoleBinding to take effect",
    )
    assert "kube-root-ca.crt" in names  # published by the controller-manager's root CA controller
    assert kubectl("get", "configmaps", "-n", namespace, kubeconfig=reader_kubeconfig).returncode == 0
    with pytest.raises(ApiException) as still_denied:
        as_reader.list_namespaced_secret(namespace)
    assert still_denied.value.status == 403


def test_a_second_testbed_does_not_collide_and_down_stops_it(testbed, tmp_path):
    up = subprocess.run(
        [str(ROOT / "hack/testbed/up"), "--base-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert up.returncode == 0, up.stderr
    last = up.stdout.strip().splitlines()[-1]
    assert last.startswith("export KUBECONFIG=")
    second = testbed_lib.Testbed.from_kubeconfig(last.removeprefix("export KUBECONFIG="))
    assert second is not None, f"{last} is not a running testbed"
    try:
        assert second.dir != testbed.dir
        assert set(second.ports.values()).isdisjoint(testbed.ports.values())
        assert set(second.alive()) == set(testbed_lib.COMPONENTS)
        nodes = second.kubectl("get", "nodes", "-o", "name").stdout.split()
        assert sorted(nodes) == sorted(f"node/{n}" for n in NODES.all)
    finally:
        down = subprocess.run(
            [str(ROOT / "hack/testbed/down"), str(second.dir)], capture_output=True, text=True, timeout=60
        )
    assert down.returncode == 0, down.stderr
    assert not second.dir.exists()
    assert not any(testbed_lib.pid_alive(pid) for pid in second.pids.values())
    assert testbed.apiserver_ready(), "stopping the second testbed disturbed the first"
    assert set(testbed.alive()) == set(testbed_lib.COMPONENTS)


def test_a_component_that_fails_to_start_is_named_and_nothing_is_left(testbed, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for exe in testbed.bin_dir.iterdir():
        (bin_dir / exe.name).symlink_to(exe)
    (bin_dir / "kube-scheduler").unlink()
    (bin_dir / "kube-scheduler").write_text(
        "#!/bin/sh\necho 'E0101 simulated: bind: address already in use'\nexit 3\n"
    )
    (bin_dir / "kube-scheduler").chmod(0o755)
    with pytest.raises(testbed_lib.TestbedError) as failed:
        testbed_lib.up(bin_dir, base_dir=tmp_path / "runs")
    message = str(failed.value)
    assert "kube-scheduler exited with code 3" in message
    assert "simulated: bind: address already in use" in message
    (run_dir,) = (tmp_path / "runs").iterdir()
    pids = testbed_lib.Testbed.load(run_dir).pids
    assert set(pids) == set(testbed_lib.COMPONENTS)
    assert not any(testbed_lib.pid_alive(pid) for pid in pids.values())


def test_extra_whole_gpu_nodes_can_be_added(testbed, admin_api):
    extra = testbed_lib.whole_gpu_nodes(3, prefix="gpu-extra")
    testbed.add_objects(extra)
    try:
        core = client.CoreV1Api(admin_api)
        for node in extra:
            name = node["metadata"]["name"]
            assert core.read_node(name).status.allocatable["nvidia.com/gpu"] == "8"
    finally:
        for node in extra:
            testbed.kubectl("delete", "node", node["metadata"]["name"], "--wait=false")


def test_kwok_stage_file_keeps_kwoks_own_default_pod_stages():
    versions = (ROOT / "hack/testbed/versions.env").read_text()
    kwok_version = next(v.split("=", 1)[1] for v in versions.splitlines() if v.startswith("KWOK_VERSION="))
    modcache = Path(
        os.environ.get("GOMODCACHE") or Path(os.environ.get("GOPATH") or Path.home() / "go") / "pkg/mod"
    )
    source = modcache / f"sigs.k8s.io/kwok@{kwok_version}/kustomize/stage/pod/fast"
    if not source.is_dir():
        pytest.skip(f"{source} not downloaded (hack/testbed/build downloads it)")
    ours = {d["metadata"]["name"]: d for d in yaml.safe_load_all(testbed_lib.KWOK_STAGES.read_text()) if d}
    # pod-complete differs only by the hold expressions (kwok-stages.yaml marks them "llmpack").
    held_keys = {
        f'.metadata.annotations["{testbed_lib.HOLD_ANNOTATION}"]',
        f'.metadata.labels["{testbed_lib.HOLD_LABEL}"]',
    }
    exprs = ours["pod-complete"]["spec"]["selector"]["matchExpressions"]
    assert {e["key"] for e in exprs} >= held_keys
    exprs[:] = [e for e in exprs if e["key"] not in held_keys]
    # pod-ready differs only by holding pods with env from a Secret for the player (the kubelet).
    env_keys = {f".spec.{c}[]?.env[]?.valueFrom.secretKeyRef.name" for c in ("containers", "initContainers")}
    exprs = ours["pod-ready"]["spec"]["selector"]["matchExpressions"]
    assert {e["key"] for e in exprs} >= env_keys
    exprs[:] = [e for e in exprs if e["key"] not in env_keys]
    for stage in ("pod-ready", "pod-complete", "pod-delete"):
        assert ours[stage] == yaml.safe_load((source / f"{stage}.yaml").read_text()), stage
