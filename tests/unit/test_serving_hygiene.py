"""What a tenant's serving objects keep closed and bounded, through the reconciler as the operator
runs it (fake API): the API key comes from a Secret and never appears in an object; replicas of
a packed pod listen on the loopback address only, behind the router; a NetworkPolicy admits the
serving port only where the cluster admin turns it on, and is pruned when turned off; every vLLM
container requests CPU and memory and its scratch volume has a size limit; `auto` keeps off
MPS through the device plugin where the admin says so; and two LLMDeployment names that render
one object name do not take each other's objects."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from test_badinput_pure import FakeKube, reconcile_through, simulated_profile

from llmpack.api.llmdeployment import LLMDeploymentSpec
from llmpack.api.quantity import quantity_value
from llmpack.controller.reconciler import OperatorConfig
from llmpack.planner.planning import scratch_bytes
from llmpack.render.plan import kube_name

OPT = {"model": {"name": "facebook/opt-1.3b"}}
DRA = {**OPT, "sharing": {"mode": "mps", "mpsProvider": "dra"}}


def applied(run, kind: str) -> list[dict[str, Any]]:
    return [o for o in run.kube.applied if o["kind"] == kind]


def pod_spec(run) -> dict[str, Any]:
    (deployment,) = {o["metadata"]["name"]: o for o in applied(run, "Deployment")}.values()
    return deployment["spec"]["template"]["spec"]


def vllm_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in pod.get("initContainers", []) + pod["containers"] if c["name"].startswith("vllm")]


def test_the_api_key_comes_from_the_secret_and_never_appears_in_an_object():
    spec = {**DRA, "serving": {"apiKeySecretRef": {"name": "openai", "key": "api-key"}}}
    run = reconcile_through(spec)
    assert run.status["phase"] == "Deploying", run.status
    containers = vllm_containers(pod_spec(run))
    assert len(containers) > 1
    for container in containers:
        env = {e["name"]: e for e in container["env"]}
        assert env["VLLM_API_KEY"] == {
            "name": "VLLM_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": "openai", "key": "api-key"}},
        }
        assert "--api-key" not in container["args"]
    # the profiling Job measures the engine, which the key does not change: it never gets it
    assert "VLLM_API_KEY" not in json.dumps(applied(run, "Job"))


def test_replicas_of_a_packed_pod_listen_on_the_loopback_address_behind_the_router():
    pod = pod_spec(reconcile_through(DRA))
    replicas = vllm_containers(pod)
    (router,) = pod["containers"]
    upstreams = [router["args"][i + 1] for i, a in enumerate(router["args"]) if a == "--upstream"]
    for container, upstream in zip(replicas, upstreams, strict=True):
        args = container["args"]
        host, port = args[args.index("--host") + 1], args[args.index("--port") + 1]
        assert host == "127.0.0.1" and upstream == f"http://127.0.0.1:{port}"
        assert "ports" not in container, "nothing outside the pod reaches a replica"
        for probe in ("startupProbe", "livenessProbe"):
            assert container[probe]["exec"]["command"][-1] == f"http://127.0.0.1:{port}/health"
    assert [p["containerPort"] for p in router["ports"]] == [8000], "the router is the one entrance"


def test_a_network_policy_admits_the_serving_port_only_where_the_admin_turns_it_on():
    assert not applied(reconcile_through(DRA), "NetworkPolicy"), "off by default"
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}}]
    settings = OperatorConfig(network_policy_from=json.dumps(peers))
    run = reconcile_through({**DRA, "serving": {"port": 9000}}, settings=settings)
    (policy,) = applied(run, "NetworkPolicy")
    (service,) = applied(run, "Service")
    assert policy["metadata"]["name"] == service["metadata"]["name"]
    assert policy["spec"]["podSelector"]["matchLabels"] == service["spec"]["selector"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 9000}], "from": peers}]
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "uid-bad"

    # turned off (a chart upgrade restarts the operator without the flag): pruned, pods untouched
    pods_before = pod_spec(run)
    again = run.reconciler.__class__(run.kube, OperatorConfig(), run.reconciler.cluster, run.kube.store)
    body = {
        "apiVersion": "llmpack.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": "bad", "namespace": "team-a", "uid": "uid-bad", "generation": 1},
        "spec": {**DRA, "serving": {"port": 9000}},
        "status": run.status,
    }
    again.reconcile(body)
    assert ("delete", "NetworkPolicy", "team-a", policy["metadata"]["name"]) in run.kube.calls
    deployments = [o for o in run.kube.applied if o["kind"] == "Deployment"]
    assert deployments[-1]["spec"]["template"]["spec"] == pods_before, "the pods do not roll"


def test_every_vllm_container_requests_cpu_and_memory_unless_the_spec_says():
    for spec in (OPT, DRA):
        for container in vllm_containers(pod_spec(reconcile_through(spec))):
            assert container["resources"]["requests"] == {"cpu": "1", "memory": "4Gi"}
            assert "memory" not in container["resources"].get("limits", {}), "no OOM kill at load"
    # a limit alone: Kubernetes requests the limit, so no default request may exceed it
    spec = {**OPT, "serving": {"resources": {"limits": {"memory": "2Gi"}, "requests": {"cpu": "3"}}}}
    for container in vllm_containers(pod_spec(reconcile_through(spec))):
        assert container["resources"]["requests"] == {"cpu": "3"}
        assert container["resources"]["limits"]["memory"] == "2Gi"


def test_the_scratch_volume_holds_the_download_and_no_more():
    run = reconcile_through(DRA)
    pod = pod_spec(run)
    (tmp,) = [v for v in pod["volumes"] if v["name"] == "tmp"]
    weight_bytes = simulated_profile(LLMDeploymentSpec.model_validate(DRA)).model.weight_bytes
    replicas = len(vllm_containers(pod))
    assert replicas > 1
    # the download (twice the weights' bytes at most), 4 GiB, and 1 GiB for each vLLM process
    expected = 2 * weight_bytes + (4 + replicas) * 2**30
    assert expected == scratch_bytes(weight_bytes, processes=replicas)
    assert 0 <= quantity_value(tmp["emptyDir"]["sizeLimit"]) - expected < 2**20, "whole MiB, rounded up"


def test_auto_keeps_off_gpus_shared_across_namespaces_where_the_admin_says_so():
    spec = {**OPT, "sharing": {"mode": "auto"}}
    cluster = _cluster_of("whole", "mps")  # whole GPUs, and GPUs the device plugin shares by MPS

    def mode(run) -> tuple[str, str | None]:
        assert run.status["phase"] == "Deploying", run.status
        chosen = run.status["recommendation"]
        return chosen["mode"], chosen.get("mpsProvider")

    assert mode(reconcile_through(spec, cluster=cluster)) == ("mps", "devicePlugin"), "it pays most"
    settings = OperatorConfig(auto_colocates_namespaces=False)
    assert mode(reconcile_through(spec, cluster=cluster, settings=settings)) == ("exclusive", None)
    named = {**OPT, "sharing": {"mode": "mps", "mpsProvider": "devicePlugin"}}
    assert mode(reconcile_through(named, cluster=cluster, settings=settings)) == ("mps", "devicePlugin")


def _cluster_of(*names: str):
    from test_badinput_pure import cluster_offering_everything

    everything = cluster_offering_everything()
    nodes = {name: node for name, node in everything.nodes.items() if name in names}
    return replace(everything, nodes=nodes, device_classes=set(), dra_devices={})


def test_two_names_that_render_one_object_name_do_not_take_each_others_objects():
    kube = FakeKube()
    first = reconcile_through(OPT, kube=kube, name="a.b")
    taken = kube_name("a.b")
    assert taken != "a.b" and taken.startswith("a-b-")
    (deployment,) = applied(first, "Deployment")
    assert deployment["metadata"]["name"] == taken
    before = len(kube.applied)

    second = reconcile_through(OPT, kube=kube, name=taken)  # a valid name, kept as it is
    status = second.status
    assert status["phase"] == "Failed", status
    assert "NameConflict" in {c["reason"] for c in status["conditions"]}
    assert "already belongs to LLMDeployment a.b (uid uid-a.b)" in status["message"]
    assert "rename one of them" in status["message"]
    owner = kube.objects[("Deployment", "team-a", taken)]["metadata"]["ownerReferences"][0]
    assert owner["uid"] == "uid-a.b", "the first one's Deployment is still its own"
    assert all(o["kind"] != "Deployment" for o in kube.applied[before:]), "nothing applied over it"
