"""One decision: `llmpack advise -f`, `llmpack plan -f` and the operator's reconcile give the same
batch size, KV cache, context and replicas per GPU for every example, with the same simulated
profile (test_plan_cli.py shows plan == operator; this adds advise). Before the planner issue the
advisor said "3 replicas fit" while the operator deployed 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_badinput_pure import reconcile_through, simulated_profile
from test_plan_cli import EXAMPLES, cluster_objects

from llmpack.api.llmdeployment import LLMDeploymentSpec
from llmpack.cli import main
from llmpack.hardware.cluster import ClusterFacts


def cli(capsys, *args: str) -> dict:
    code = main(list(args))
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_advise_plan_and_the_operator_agree(example: Path, capsys, tmp_path):
    body = yaml.safe_load(example.read_text())
    spec = LLMDeploymentSpec.model_validate(body["spec"])
    profile = simulated_profile(spec).model_dump_json()
    profile_file = tmp_path / "profile.json"
    profile_file.write_text(profile)
    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": cluster_objects()}))

    advised = cli(capsys, "advise", "-f", str(example), "--profile", str(profile_file), "--json")
    planned = cli(
        capsys, "plan", "-f", str(example), "--profile", str(profile_file), "--cluster", str(cluster_file),
        "-o", "json",
    )["decision"]["recommendation"]  # fmt: skip
    operator = reconcile_through(
        body["spec"],
        cluster=ClusterFacts.from_objects(cluster_objects()),
        name=body["metadata"]["name"],
        profile_json=profile,
    ).status["recommendation"]
    assert planned == operator

    assert advised["b_opt"] == operator["maxNumSeqs"]
    assert advised["kv_cache_bytes"] == operator["kvCacheBytes"]
    assert advised["max_model_len"] == operator["maxModelLen"]
    assert advised["per_replica_memory_bytes"] == operator["perReplicaMemoryBytes"]
    mode = (operator["mode"], operator.get("mpsProvider"))
    if mode == ("mps", "dra"):
        assert advised["replicas_per_gpu"] == operator["replicasPerGPU"]
        assert advised["vllm_args"] == operator["vllmArgs"]
    elif operator["mode"] == "mps":  # the device plugin's slices may hold fewer
        assert operator["replicasPerGPU"] <= advised["replicas_per_gpu"]
    elif operator["mode"] == "mig":
        assert advised["mig_profile"] == (spec.sharing.mig_profile or operator["migProfile"])
        assert advised["mig_gpu_memory_utilization"] == operator["gpuMemoryUtilization"]
    else:
        assert operator["replicasPerGPU"] == 1
    assert advised["explanation"] in operator["explanation"]


def test_the_readme_demo_says_the_same_number_of_replicas_everywhere(capsys, tmp_path):
    """The README's OPT-1.3B demo: memory holds 3, the performance model keeps 2, and advise says 2."""
    example = next(p for p in EXAMPLES if p.stem == "opt-1.3b-mps-dra")
    spec = LLMDeploymentSpec.model_validate(yaml.safe_load(example.read_text())["spec"])
    profile_file = tmp_path / "profile.json"
    profile_file.write_text(simulated_profile(spec).model_dump_json())
    advised = cli(capsys, "advise", "-f", str(example), "--profile", str(profile_file), "--json")
    assert advised["replicas_memory_fit"] > advised["replicas_per_gpu"] == 2
    assert advised["replicas_limited_by"] == "min_replica_gain"
