"""A GPUPool and its members through the operator's own passes (controller/reconciler.py for the
members, controller/pool.py for the pool) on the fake client: each member asks in its status, the
pool places them all at once, and the members render one pod per pool GPU on the pool's claim.
The testbed runs the same with the real control plane in tests/e2e/test_gpupool_e2e.py."""

from __future__ import annotations

from typing import Any

import pytest
from test_badinput_pure import body, reconcile_through

from llmpack.controller.pool import PoolReconciler
from llmpack.render.autoscaling import quantity
from llmpack.runtime.fake import FakeClient as FakeKube

NS = "team-a"


def pool_body(max_gpus: int = 4, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "llmpack.io/v1alpha1",
        "kind": "GPUPool",
        "metadata": {"name": "shared", "namespace": NS, "uid": "uid-pool", "generation": 1},
        "spec": {"gpu": {"product": "NVIDIA-H100-80GB-HBM3", "maxGPUs": max_gpus}, **spec},
    }


def member(model: str, *, count: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "gpuPoolRef": {"name": "shared"},
        "model": {"name": model},
        "sharing": {"maxReplicasPerGPU": 1},
        "slo": {"itlMeanMs": 60},
        "gpu": {"count": count},
        **extra,
    }


MEMBERS = {"chat": member("facebook/opt-1.3b"), "code": member("facebook/opt-2.7b")}


class Cluster:
    """The fake API server with a pool in its watch cache, and the passes the operator runs."""

    def __init__(self, pool: dict[str, Any], settings: Any = None):
        self.kube = FakeKube()
        self.settings = settings
        self.pool = pool
        self.kube.store.put("GPUPool", pool)
        self.members: dict[str, dict[str, Any]] = {}

    def member_pass(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        run = reconcile_through(spec, name=name, namespace=NS, kube=self.kube, settings=self.settings)
        self.members[name] = {**body(spec, name, NS), "status": run.status}
        return run.status

    def pool_pass(self) -> dict[str, Any]:
        reconciler = PoolReconciler(
            kube=self.kube,
            store=self.kube.store,
            cache=_cache(self.kube),
            members=lambda namespace: list(self.members.values()),
        )
        status = reconciler.reconcile(self.pool)
        self.pool = {**self.pool, "status": status}
        self.kube.store.put("GPUPool", self.pool)
        return status

    def objects(self, kind: str) -> dict[str, dict[str, Any]]:
        return {n: o for (k, _, n), o in self.kube.objects.items() if k == kind}


def _cache(kube: FakeKube):
    from llmpack.controller.cache import ProfileCache
    from llmpack.controller.reconciler import OperatorConfig

    return ProfileCache(kube, OperatorConfig().operator_namespace)


def test_members_wait_for_the_pool_then_share_its_claims():
    cluster = Cluster(pool_body())
    for name, spec in MEMBERS.items():
        status = cluster.member_pass(name, spec)
        assert status["phase"] == "Pending" and "has not placed" in status["message"], status["message"]
        request = status["pool"]["request"]
        assert request["replicas"] == status["recommendation"]["replicas"] >= 1
        assert request["memoryBytes"] > 0 and request["itlCapMs"] == 60
    pool = cluster.pool_pass()
    assert pool["phase"] == "Ready", pool["message"]
    assert pool["gpusUsed"] == 1 and "chat x" in pool["placement"] and "code x" in pool["placement"]
    (claim,) = cluster.objects("ResourceClaim").values()
    assert claim["metadata"]["ownerReferences"][0]["kind"] == "GPUPool"
    for name, spec in MEMBERS.items():
        status = cluster.member_pass(name, spec)
        assert status["pool"]["gpus"] == [{"gpu": 0, "replicas": status["pool"]["request"]["replicas"]}]
        pod = cluster.objects("Deployment")[f"{name}-gpu0"]["spec"]["template"]["spec"]
        assert pod["resourceClaims"] == [{"name": "gpu", "resourceClaimName": claim["metadata"]["name"]}]
        caps = {
            e["value"] for c in pod["initContainers"] for e in c["env"] if e["name"].startswith("CUDA_MPS")
        }
        assert caps == {f"0={-(-status['pool']['request']['memoryBytes'] // 2**20)}M"}
    assert "chat-gpu0" in cluster.objects("Deployment") and "chat" in cluster.objects("Service")


def test_scaling_one_member_leaves_the_others_pods_as_they_were():
    cluster = Cluster(pool_body())
    for name, spec in MEMBERS.items():
        cluster.member_pass(name, spec)
    cluster.pool_pass()
    for name, spec in MEMBERS.items():
        cluster.member_pass(name, spec)
    code_before = cluster.objects("Deployment")["code-gpu0"]["spec"]
    scaled = member("facebook/opt-1.3b", count=3)
    cluster.member_pass("chat", scaled)
    pool = cluster.pool_pass()
    chat = next(m for m in pool["members"] if m["name"] == "chat")
    assert chat["placed"] == chat["replicas"] == 3
    cluster.member_pass("chat", scaled)
    cluster.member_pass("code", MEMBERS["code"])
    assert cluster.objects("Deployment")["code-gpu0"]["spec"] == code_before


def test_an_autoscaled_member_counts_its_load_in_gpus_worth_through_an_external_metric():
    cluster = Cluster(pool_body())
    spec = member("facebook/opt-1.3b", autoscaling={"minGPUs": 1, "maxGPUs": 3})
    cluster.member_pass("chat", spec)
    cluster.pool_pass()
    cluster.member_pass("chat", spec)
    hpa = cluster.objects("HorizontalPodAutoscaler")["chat"]["spec"]
    (metric,) = hpa["metrics"]
    # its pods are pool GPUs' shares, not GPUs: the HPA divides the member's total load by the
    # requests one GPU's worth of its own packing holds, and scales gpu.count (GPUs' worth)
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["selector"] == {"matchLabels": {"llmdeployment": "chat"}}
    rec = cluster.members["chat"]["status"]["recommendation"]
    assert metric["external"]["target"]["averageValue"] == quantity(
        0.8 * rec["maxNumSeqs"] * rec["replicasPerGPU"]
    )
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 3)
    assert hpa["scaleTargetRef"]["kind"] == "LLMDeployment"


def test_a_member_that_does_not_fit_is_refused_and_the_other_keeps_serving():
    cluster = Cluster(pool_body(max_gpus=1))
    cluster.member_pass("chat", MEMBERS["chat"])
    cluster.pool_pass()
    big = member("facebook/opt-2.7b", count=8)
    cluster.member_pass("code", big)
    pool = cluster.pool_pass()
    assert pool["phase"] == "Degraded" and "GPUs are full (raise spec.gpu.maxGPUs)" in pool["message"]
    chat = cluster.member_pass("chat", MEMBERS["chat"])
    assert "chat-gpu0" in cluster.objects("Deployment") and chat["pool"]["gpus"]


def test_a_member_with_tensor_parallelism_is_refused_naming_the_pool():
    cluster = Cluster(pool_body())
    spec = member("facebook/opt-1.3b", serving={"extraArgs": ["--tensor-parallel-size", "2"]})
    status = cluster.member_pass("chat", spec)
    assert status["phase"] == "Failed" and "GPUPool shared" in status["message"], status["message"]


def test_a_mig_pool_says_which_layout_its_nodes_need_and_its_members_ask_for_their_slices():
    cluster = Cluster(pool_body(sharing={"mode": "mig"}))
    spec = member("facebook/opt-1.3b", count=1)
    status = cluster.member_pass("chat", spec)
    profile = status["recommendation"]["migProfile"]
    assert status["pool"]["request"]["migProfile"] == profile and status["phase"] != "Pending"
    pool = cluster.pool_pass()
    assert pool["migConfig"] and "nvidia.com/mig.config=" + pool["migConfig"] in pool["nodeConfiguration"]
    assert pool["gpus"][0]["migDevices"] == {profile: status["pool"]["request"]["replicas"]}
    assert not cluster.objects("ResourceClaim")
    limits = cluster.objects("Deployment")["chat"]["spec"]["template"]["spec"]["containers"][0]["resources"][
        "limits"
    ]
    assert limits[f"nvidia.com/mig-{profile}"] == 1


def test_members_pay_their_memory_share_of_the_gpus_they_sit_on():
    from llmpack.controller.reconciler import OperatorConfig

    prices = OperatorConfig(gpu_hour_prices=(("NVIDIA-H100-80GB-HBM3", 2.5),))
    cluster = Cluster(pool_body(), settings=prices)
    for name, spec in MEMBERS.items():
        cluster.member_pass(name, spec)
    pool = cluster.pool_pass()
    assert pool["gpusUsed"] == 1
    costs = {
        name: cluster.member_pass(name, spec)["recommendation"]["cost"] for name, spec in MEMBERS.items()
    }
    # one GPU, paid for in full by its two members, each by the memory its replicas take on it
    assert sum(c["gpuHoursPerHour"] for c in costs.values()) == pytest.approx(1.0, abs=1e-3)
    (gpu,) = pool["gpus"]
    for name, cost in costs.items():
        row = next(m for m in gpu["members"] if m["name"] == name)
        assert cost["gpuHoursPerHour"] == pytest.approx(row["memoryBytes"] / gpu["memoryBytes"], abs=1e-4)
        assert cost["costPerHour"] == pytest.approx(2.5 * cost["gpuHoursPerHour"], abs=1e-3)
        expected = 2.5 * cost["gpuHoursPerHour"] / (row["predictedTokensPerS"] * 3600) * 1e6
        assert cost["costPerMillionTokens"] == pytest.approx(expected, rel=1e-3)
        assert "GPUPool shared" in cost["poolShare"]


def placed_cluster(*members: str) -> Cluster:
    cluster = Cluster(pool_body())
    for name in members:
        cluster.member_pass(name, MEMBERS[name])
    cluster.pool_pass()
    for name in members:
        cluster.member_pass(name, MEMBERS[name])
    return cluster


def caps(deployment: dict[str, Any]) -> set[str]:
    pod = deployment["spec"]["template"]["spec"]
    return {e["value"] for c in pod["initContainers"] for e in c["env"] if e["name"].startswith("CUDA_MPS")}


def test_a_changed_replica_keeps_serving_until_the_pool_places_it_again():
    cluster = placed_cluster("chat", "code")
    before = cluster.objects("Deployment")["chat-gpu0"]["spec"]
    changed = {**MEMBERS["chat"], "advisor": {"maxNumSeqs": 32}}  # a smaller replica: a new revision
    status = cluster.member_pass("chat", changed)
    assert status["phase"] == "Deploying" and "has yet to place the changed replicas" in status["message"]
    assert cluster.objects("Deployment")["chat-gpu0"]["spec"] == before  # nothing applied, nothing pruned
    pool = cluster.pool_pass()
    chat = next(m for m in pool["members"] if m["name"] == "chat")
    assert chat["revision"] == status["pool"]["request"]["revision"] and chat["state"] == "Placed"
    cluster.member_pass("chat", changed)
    (deployment,) = (d for n, d in cluster.objects("Deployment").items() if n.startswith("chat-gpu"))
    assert caps(deployment) == {f"0={-(-status['pool']['request']['memoryBytes'] // 2**20)}M"}


def test_a_member_that_leaves_its_pool_drops_its_pool_pods_and_its_pool_status():
    cluster = placed_cluster("chat")
    alone = {k: v for k, v in MEMBERS["chat"].items() if k != "gpuPoolRef"}
    status = cluster.member_pass("chat", alone)
    assert "pool" not in status
    assert "chat-gpu0" not in cluster.objects("Deployment") and "chat" in cluster.objects("Deployment")


def test_a_member_the_pool_cannot_place_any_more_loses_its_pods_and_says_why():
    cluster = placed_cluster("chat", "code")
    cluster.pool = {**cluster.pool, "spec": pool_body(max_gpus=1)["spec"]}
    big = member("facebook/opt-2.7b", count=4)
    cluster.member_pass("code", big)
    pool = cluster.pool_pass()
    code = next(m for m in pool["members"] if m["name"] == "code")
    assert code["state"] == "Short" and "GPUs are full" in code["message"], code
    status = cluster.member_pass("code", big)
    assert "the GPUPool shared: " in status["message"] and "GPUs are full" in status["message"]
    # what it does run matches what the pool placed
    placed = {n for n in cluster.objects("Deployment") if n.startswith("code-gpu")}
    assert placed == {f"code-gpu{g['gpu']}" for g in status["pool"]["gpus"]}


def test_a_pool_that_cannot_be_placed_keeps_its_placement_and_says_why():
    cluster = placed_cluster("chat", "code")
    placed = cluster.pool["status"]["gpus"]
    cluster.pool = {
        **cluster.pool,
        "spec": {**cluster.pool["spec"], "gpu": {"product": "NVIDIA-NOPE", "maxGPUs": 4}},
    }
    status = cluster.pool_pass()
    assert status["phase"] == "Degraded" and "NVIDIA-NOPE" in status["message"]
    assert status["gpus"] == placed
    cluster.member_pass("chat", MEMBERS["chat"])
    assert "chat-gpu0" in cluster.objects("Deployment")


def test_a_member_of_a_mig_pool_may_fix_its_slice():
    cluster = Cluster(pool_body(sharing={"mode": "mig"}))
    spec = {**member("facebook/opt-1.3b"), "sharing": {"mode": "mig", "migProfile": "3g.40gb"}}
    status = cluster.member_pass("chat", spec)
    assert status["recommendation"]["migProfile"] == "3g.40gb"
    assert status["pool"]["request"]["migProfile"] == "3g.40gb"
    pool = cluster.pool_pass()
    assert pool["gpus"][0]["migDevices"] == {"3g.40gb": status["pool"]["request"]["replicas"]}
