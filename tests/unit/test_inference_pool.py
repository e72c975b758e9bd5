"""spec.serving.inferencePool through the reconciler as the operator runs it (fake API): the
InferencePool names every replica port of a packed pod (one port per pod elsewhere), whose
replicas then listen on the pod IP with HTTP probes; its picker is the spec's or the cluster
admin's, and a spec with neither is refused before any profiling; the NetworkPolicy admits the
replica ports too; turning the pool on or off rolls packed pods only. The API server's own
check of what is rendered, against the real CRD, is tests/e2e/test_inference_pool_e2e.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_badinput_pure import reconcile_through
from test_serving_hygiene import applied, pod_spec, vllm_containers

from llmpack.controller.cli import endpoint_picker
from llmpack.controller.reconciler import OperatorConfig
from llmpack.render.plan import ANNOTATION_CONFIG_HASH

OPT = {"model": {"name": "facebook/opt-1.3b"}}
DRA = {**OPT, "sharing": {"mode": "mps", "mpsProvider": "dra"}, "advisor": {"replicasPerGPU": 3}}
POOL = {"inferencePool": {"endpointPickerRef": {"name": "vllm-epp"}}}


def pool_of(run) -> dict[str, Any]:
    (pool,) = applied(run, "InferencePool")
    return pool


def test_the_pool_names_each_replica_of_a_packed_pod_which_listens_on_the_pod_ip():
    run = reconcile_through({**DRA, "serving": POOL})
    assert run.status["phase"] == "Deploying", run.status
    pool = pool_of(run)
    (service,) = applied(run, "Service")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert pool["spec"]["targetPorts"] == [{"number": 8001}, {"number": 8002}, {"number": 8003}]
    assert pool["spec"]["endpointPickerRef"] == {
        "kind": "Service",
        "name": "vllm-epp",
        "port": {"number": 9002},
        "failureMode": "FailClose",
    }
    replicas = vllm_containers(pod_spec(run))
    assert [c["ports"][0]["containerPort"] for c in replicas] == [8001, 8002, 8003]
    for replica in replicas:
        assert "--host" not in replica["args"], "listens on every interface, for the pool's picker"
        assert replica["startupProbe"]["httpGet"]["port"] == replica["ports"][0]["containerPort"]


@pytest.mark.parametrize(
    "sharing",
    [{"mode": "exclusive"}, {"mode": "mig"}, {"mode": "mps", "mpsProvider": "devicePlugin"}],
    ids=["exclusive", "mig", "mps-device-plugin"],
)
def test_one_vllm_per_pod_is_one_endpoint_on_the_service_port(sharing):
    run = reconcile_through({**OPT, "sharing": sharing, "serving": {**POOL, "port": 8100}})
    assert run.status["phase"] == "Deploying", run.status
    assert pool_of(run)["spec"]["targetPorts"] == [{"number": 8100}]


def test_the_picker_is_the_cluster_admins_unless_the_spec_names_one_and_neither_is_refused_first():
    admin = OperatorConfig(endpoint_picker="shared-epp:9100")
    run = reconcile_through({**DRA, "serving": {"inferencePool": {}}}, settings=admin)
    assert pool_of(run)["spec"]["endpointPickerRef"]["name"] == "shared-epp"
    assert pool_of(run)["spec"]["endpointPickerRef"]["port"] == {"number": 9100}
    own = {"inferencePool": {"endpointPickerRef": {"name": "mine", "port": 9002, "failureMode": "FailOpen"}}}
    run = reconcile_through({**DRA, "serving": own}, settings=admin)
    assert pool_of(run)["spec"]["endpointPickerRef"]["name"] == "mine"
    assert pool_of(run)["spec"]["endpointPickerRef"]["failureMode"] == "FailOpen"

    refused = reconcile_through({**DRA, "serving": {"inferencePool": {}}})
    assert refused.status["phase"] == "Failed"
    assert refused.status["message"].startswith("serving.inferencePool needs an endpoint picker")
    assert not refused.kube.applied, "refused before any Job or pod"


def test_the_network_policy_admits_the_replica_ports_the_pool_routes_to():
    settings = OperatorConfig(network_policy_from=json.dumps([{"namespaceSelector": {}}]))
    run = reconcile_through({**DRA, "serving": POOL}, settings=settings)
    (policy,) = applied(run, "NetworkPolicy")
    ports = [p["port"] for p in policy["spec"]["ingress"][0]["ports"]]
    assert ports == [8000, 8001, 8002, 8003]


def config_hash(run) -> str:
    (deployment,) = applied(run, "Deployment")
    return deployment["spec"]["template"]["metadata"]["annotations"][ANNOTATION_CONFIG_HASH]


def test_the_pool_rolls_packed_pods_only_and_its_picker_rolls_none():
    def hashes(spec: dict[str, Any]) -> str:
        return config_hash(reconcile_through(spec))

    assert hashes(DRA) != hashes({**DRA, "serving": POOL}), "replicas move to the pod IP"
    other_picker = {"inferencePool": {"endpointPickerRef": {"name": "other"}}}
    assert hashes({**DRA, "serving": POOL}) == hashes({**DRA, "serving": other_picker})
    exclusive = {**OPT, "sharing": {"mode": "exclusive"}}
    assert hashes(exclusive) == hashes({**exclusive, "serving": POOL})


def test_the_chart_flag_takes_service_and_port_and_refuses_anything_else():
    assert endpoint_picker("vllm-epp:9002") == "vllm-epp:9002"
    for bad in ("vllm-epp", "Vllm:9002", "epp:0", "epp:70000", ":9002"):
        with pytest.raises(Exception, match="is not SERVICE:PORT"):
            endpoint_picker(bad)


def test_the_pool_comes_last_so_a_missing_crd_keeps_the_autoscaler():
    """A refused apply stops the ones after it (controller/act.py): the pool, whose CRD may be
    missing, is applied after the HorizontalPodAutoscaler."""
    spec = {**DRA, "serving": POOL, "autoscaling": {"minGPUs": 1, "maxGPUs": 2}}
    kinds = [o["kind"] for o in reconcile_through(spec).kube.applied if o["kind"] != "Job"]
    assert kinds[-2:] == ["HorizontalPodAutoscaler", "InferencePool"], kinds
