"""A GPUPool on the testbed's DRA node: three members of different models share GPUs.

What a user sees: fewer GPUs than the three deployed apart, pods of different members on one
ResourceClaim, scaling or changing one member leaving the others' pods as they are (same UIDs),
and a deleted member's memory going to the next one."""

from __future__ import annotations

import time

import pytest
import yaml
from test_operator import EXAMPLES, serving_pods, wait_phase

POOL = EXAMPLES / "gpupool"
MEMBERS = ("chat", "summarize", "route")


def get_pool(kube, namespace, name="shared-h100"):
    return kube.get("GPUPool", namespace, name)


def wait_pool(kube, player, namespace, check, timeout=120):
    deadline = time.monotonic() + timeout
    pool = None
    while time.monotonic() < deadline:
        player.play_once(namespace)
        pool = get_pool(kube, namespace)
        if pool and check(pool.get("status") or {}):
            return pool
        time.sleep(0.5)
    pytest.fail(f"pool status not as expected in {timeout}s: {yaml.safe_dump((pool or {}).get('status'))}")


def pod_uids(kube, namespace, name):
    return {p["metadata"]["uid"] for p in serving_pods(kube, namespace, name)}


def claims_of(kube, namespace, name):
    return {
        c.get("resourceClaimName")
        for p in serving_pods(kube, namespace, name)
        for c in p["spec"].get("resourceClaims") or []
    }


class Timeline:
    """When each step a user waits for was reached, printed at the end (pytest -s shows it)."""

    def __init__(self):
        self.start = time.monotonic()
        self.steps: list[tuple[float, str]] = []

    def mark(self, what: str) -> None:
        self.steps.append((time.monotonic() - self.start, what))

    def __str__(self) -> str:
        return "\n".join(f"{t:7.1f} s  {what}" for t, what in self.steps)


def test_three_models_share_the_pools_gpus(operator_process, kube_admin, kubectl, player, namespace):
    timeline = Timeline()
    kubectl("apply", "-n", namespace, "-f", str(POOL / "pool.yaml"))
    for member in MEMBERS:
        kubectl("apply", "-n", namespace, "-f", str(POOL / f"{member}.yaml"))
    timeline.mark("pool and 3 members applied")
    objs = {m: wait_phase(kube_admin, player, namespace, m, timeout=180) for m in MEMBERS}
    timeline.mark("3 members Ready (profiled by the simulated backend, placed, pods running)")
    pool = wait_pool(
        kube_admin,
        player,
        namespace,
        lambda s: s.get("phase") == "Ready" and len(s.get("members") or []) == 3,
    )
    status = pool["status"]
    apart = sum(o["spec"]["gpu"]["count"] for o in objs.values())  # each alone holds its GPUs whole
    assert status["gpusUsed"] < apart, status
    assert status["gpusUsed"] >= status["memoryBound"] >= 1
    for member, obj in objs.items():
        assert obj["status"]["pool"]["name"] == "shared-h100"
        assert obj["status"]["pool"]["gpus"], obj["status"]["pool"]
        pods = serving_pods(kube_admin, namespace, member)
        assert pods and all(p["spec"]["nodeName"] == "gpu-dra-a" for p in pods)
    # pods of different members reference one claim, and the claim is allocated once for them
    claims = {m: claims_of(kube_admin, namespace, m) for m in MEMBERS}
    shared = {c for a in MEMBERS for b in MEMBERS if a < b for c in claims[a] & claims[b]}
    assert shared, claims
    claim = kube_admin.get("ResourceClaim", namespace, next(iter(shared)))
    assert (claim.get("status") or {}).get("allocation"), claim.get("status")
    assert len(claim["status"].get("reservedFor") or []) >= 2
    table = kubectl("get", "gpool", "-n", namespace).stdout
    assert "shared-h100" in table and "Ready" in table and "gpu0:" in table
    timeline.mark(
        f"pool Ready: {status['gpusUsed']} GPUs for 3 members (apart: {apart}); {status['placement']}"
    )
    print(table, kubectl("get", "llmd", "-n", namespace).stdout, sep="\n")

    # scaling one member, then changing its serving flags, leaves the others' pods untouched
    others = {m: pod_uids(kube_admin, namespace, m) for m in MEMBERS[1:]}
    kubectl("scale", "llmd", "chat", "-n", namespace, "--replicas", "2")
    wait_pool(
        kube_admin, player, namespace, lambda s: _placed(s, "chat") == 2 * _wanted_per_gpu(objs["chat"])
    )
    wait_phase(kube_admin, player, namespace, "chat")
    timeline.mark("chat scaled to gpu.count 2: placed and Ready; the others' pods untouched")
    kubectl(
        "patch",
        "llmd",
        "chat",
        "-n",
        namespace,
        "--type",
        "merge",
        "-p",
        '{"spec":{"serving":{"env":[{"name":"VLLM_LOGGING_LEVEL","value":"DEBUG"}]}}}',
    )
    wait_phase(kube_admin, player, namespace, "chat")
    for member, uids in others.items():
        assert pod_uids(kube_admin, namespace, member) == uids, member
    timeline.mark("chat's serving env changed: its pods rolled, the others' pod UIDs the same")

    # deleting a member that shares a GPU frees its memory there for the next one
    before = get_pool(kube_admin, namespace)["status"]
    used = sum(g["memoryBytes"] for g in before["gpus"])
    shared_gpu = next(g for g in before["gpus"] if len({m["name"] for m in g["members"]}) >= 2)
    gone = next(m["name"] for m in shared_gpu["members"] if m["name"] != "chat")
    stays = {m["name"] for g in before["gpus"] for m in g["members"]} - {gone, "chat"}
    kept = {m: pod_uids(kube_admin, namespace, m) for m in stays}
    kubectl("delete", "llmd", gone, "-n", namespace, "--wait=false")
    after = wait_pool(kube_admin, player, namespace, lambda s: all(m["name"] != gone for m in s["members"]))
    assert sum(g["memoryBytes"] for g in after["status"]["gpus"]) < used
    timeline.mark(f"{gone} deleted: its memory on gpu{shared_gpu['index']} freed in the pool's status")
    doc = yaml.safe_load((POOL / f"{gone}.yaml").read_text())
    doc["metadata"]["name"] = f"{gone}-2"
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
    wait_phase(kube_admin, player, namespace, f"{gone}-2", timeout=180)
    final = wait_pool(kube_admin, player, namespace, lambda s: _placed(s, f"{gone}-2") > 0)
    assert final["status"]["gpusUsed"] <= before["gpusUsed"]
    landed = {g["index"] for g in final["status"]["gpus"] for m in g["members"] if m["name"] == f"{gone}-2"}
    assert shared_gpu["index"] in landed, (landed, shared_gpu)
    for member, uids in kept.items():
        assert pod_uids(kube_admin, namespace, member) == uids, member
    timeline.mark(f"{gone}-2 placed in the freed memory: {final['status']['placement']}")
    print(timeline)


def _placed(status, member):
    return next((m["placed"] for m in status.get("members") or [] if m["name"] == member), 0)


def _wanted_per_gpu(obj):
    return obj["status"]["recommendation"]["replicasPerGPU"]


def test_a_member_of_a_missing_pool_says_so(operator_process, kube_admin, kubectl, player, namespace):
    doc = yaml.safe_load((POOL / "route.yaml").read_text())
    doc["spec"]["gpuPoolRef"]["name"] = "nowhere"
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
    obj = wait_phase(kube_admin, player, namespace, "route", phase="Pending", timeout=60)
    assert "GPUPool nowhere" in obj["status"]["message"] and "create it" in obj["status"]["message"]
    reasons = {c["reason"] for c in obj["status"]["conditions"]}
    assert "GPUPoolNotFound" in reasons, obj["status"]["conditions"]
