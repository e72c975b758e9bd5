"""`llmpack plan`, the public dry run, decides what the operator decides: for every example, with
the same cluster and the same simulated profile, the recommendation `llmpack plan` prints equals the
one the operator's reconcile writes into the status, and the objects are the ones it applies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_badinput_pure import reconcile_through, simulated_profile

from llmpack.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
H100 = "NVIDIA-H100-80GB-HBM3"
MIG_SLICES = (("1g.10gb", "7"), ("2g.20gb", "3"), ("3g.40gb", "2"))


def cluster_objects(product: str = H100) -> list[dict]:
    """What `kubectl get nodes,deviceclasses,resourceslices -o yaml` prints for a cluster offering
    the product whole, as MIG slices, shared by the device plugin's MPS, and through DRA."""

    def node(name: str, labels: dict, allocatable: dict) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product, **labels}},
            "status": {"allocatable": allocatable, "capacity": allocatable},
        }

    return [
        node("whole", {"nvidia.com/gpu.memory": "81559"}, {"nvidia.com/gpu": "8"}),
        node("mig", {}, {f"nvidia.com/mig-{p}": n for p, n in MIG_SLICES}),
        node(
            "mps",
            {
                "nvidia.com/gpu.product": product + "-SHARED",
                "nvidia.com/gpu.sharing-strategy": "mps",
                "nvidia.com/gpu.replicas": "2",
                "nvidia.com/gpu.memory": "81559",
            },
            {"nvidia.com/gpu": "16"},
        ),
        node("dra", {"nvidia.com/gpu.memory": "81559"}, {}),
        {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": "gpu.nvidia.com"}},
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceSlice",
            "metadata": {"name": "dra-gpus"},
            "spec": {
                "driver": "gpu.nvidia.com",
                "nodeName": "dra",
                "devices": [{"name": f"g{i}", "attributes": {"type": {"string": "gpu"}}} for i in range(8)],
            },
        },
    ]  # fmt: skip


def plan(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["plan", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cluster_file(tmp_path) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": cluster_objects()}))
    return path


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_plan_decides_what_the_operator_decides(example, cluster_file, capsys, tmp_path):
    from llmpack.api.llmdeployment import LLMDeploymentSpec
    from llmpack.hardware.cluster import ClusterFacts

    body = yaml.safe_load(example.read_text())
    profile = simulated_profile(LLMDeploymentSpec.model_validate(body["spec"])).model_dump_json()
    (tmp_path / "profile.json").write_text(profile)
    code, out, err = plan(
        capsys, "-f", str(example), "--profile", str(tmp_path / "profile.json"),
        "--cluster", str(cluster_file), "-o", "json",
    )  # fmt: skip
    assert code == 0, err
    printed = json.loads(out)
    # the operator, on the same cluster, with the same profile published by its Job
    run = reconcile_through(
        body["spec"],
        cluster=ClusterFacts.from_objects(cluster_objects()),
        name=body["metadata"]["name"],
        profile_json=profile,
    )
    assert run.status["phase"] in ("Deploying", "Ready"), run.status
    assert printed["decision"]["recommendation"] == run.status["recommendation"]
    applied = {(o["kind"], o["metadata"]["name"]) for (_, _, _), o in run.kube.objects.items()}
    for obj in printed["objects"]:
        assert (obj["kind"], obj["metadata"]["name"]) in applied


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_simulate_plans_with_what_the_simulated_profiling_job_would_publish(example, cluster_file, capsys):
    code, out, err = plan(
        capsys, "-f", str(example), "--simulate", "--cluster", str(cluster_file), "-o", "json"
    )
    assert code == 0, err
    rec = json.loads(out)["decision"]["recommendation"]
    assert rec["maxNumSeqs"] >= 1 and rec["replicas"] >= 1 and rec["explanation"]


def test_without_a_profile_the_plan_is_the_profiling_job(capsys):
    code, out, _ = plan(capsys, "-f", str(ROOT / "examples/llama-2-7b-exclusive.yaml"))
    assert code == 0
    printed = yaml.safe_load(out)
    assert printed["decision"]["phase"] == "Profiling"
    kinds = [o["kind"] for o in printed["objects"]]
    assert kinds == ["ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Job"]
    job = printed["objects"][-1]
    assert job["metadata"]["name"] == printed["decision"]["profilingJob"]


def test_a_profile_file_is_planned_with(capsys, tmp_path):
    example = ROOT / "examples/llama-2-7b-exclusive.yaml"
    code, out, _ = plan(capsys, "-f", str(example), "--simulate", "-o", "json")
    assert code == 0
    simulated = json.loads(out)["decision"]["recommendation"]
    # the same profile from a file gives the same decision
    profile = tmp_path / "profile.json"
    main(["profile", "--backend", "simulated", "--model", "meta-llama/Llama-2-7b-hf", "--gpu", H100,
          "--prompt-tokens", "512", "--output-tokens", "256", "--output", str(profile)])  # fmt: skip
    capsys.readouterr()
    code, out, _ = plan(capsys, "-f", str(example), "--profile", str(profile), "-o", "json")
    assert (
        code == 0
        and json.loads(out)["decision"]["recommendation"]["mode"] == simulated["mode"] == "exclusive"
    )


def test_an_unservable_spec_exits_1_with_the_message_the_status_would_carry(capsys):
    # the default cluster offers the GPU whole only: no MIG slices
    code, out, err = plan(capsys, "-f", str(ROOT / "examples/opt-2.7b-mig.yaml"), "--simulate")
    assert code == 1 and out == ""
    assert "NoMatchingNodes: no node offers NVIDIA-H100-80GB-HBM3 for sharing mode mig" in err


def test_a_file_without_an_llmdeployment_is_bad_input(capsys, tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    code, _, err = plan(capsys, "-f", str(path))
    assert code == 2 and "holds 0 LLMDeployment objects" in err


def test_plan_places_the_pool_example_and_renders_its_claims_and_members_pods(capsys, monkeypatch):
    """`llmpack plan --pool` on examples/gpupool: the README's pool of three models on 2 GPUs."""
    pool = ROOT / "examples" / "gpupool"
    monkeypatch.chdir(pool)
    code, out, err = plan(
        capsys, "--pool", "pool.yaml", "-f", "chat.yaml", "-f", "summarize.yaml", "-f", "route.yaml",
        "--simulate", "-o", "json",
    )  # fmt: skip
    assert code == 0, err
    document = json.loads(out)
    status = document["pool"]
    assert status["phase"] == "Ready" and status["gpusUsed"] == 2 and status["memoryBound"] == 2
    kinds = {(o["kind"], o["metadata"]["name"]) for o in document["objects"]}
    claims = {name for kind, name in kinds if kind == "ResourceClaim"}
    assert len(claims) == 2
    for member in ("chat", "summarize", "route"):
        assert ("Service", member) in kinds
        pods = [
            o
            for o in document["objects"]
            if o["kind"] == "Deployment" and o["metadata"]["name"].startswith(member)
        ]
        assert pods and all(
            p["spec"]["template"]["spec"]["resourceClaims"][0]["resourceClaimName"] in claims for p in pods
        )
    code, _, err = plan(capsys, "-f", "chat.yaml", "-f", "route.yaml", "--simulate")
    assert code == 2 and "give it with --pool" in err


def test_plan_prices_pool_members_by_their_memory_share_as_the_operator_does(capsys, monkeypatch):
    monkeypatch.chdir(ROOT / "examples" / "gpupool")
    code, out, err = plan(
        capsys, "--pool", "pool.yaml", "-f", "chat.yaml", "-f", "summarize.yaml", "-f", "route.yaml",
        "--simulate", "--gpu-hour-price", f"{H100}=2.5", "-o", "json",
    )  # fmt: skip
    assert code == 0, err
    document = json.loads(out)
    costs = {name: m["recommendation"]["cost"] for name, m in document["members"].items()}
    assert all("GPUPool shared-h100" in c["poolShare"] for c in costs.values())
    # the pool's GPUs are paid for in full by its members
    assert sum(c["gpuHoursPerHour"] for c in costs.values()) == pytest.approx(
        document["pool"]["gpusUsed"], abs=1e-3
    )
