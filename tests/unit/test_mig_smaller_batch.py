"""MIG where one replica at B_opt fits no offered slice: the plan serves the largest batch one
replica holds on a slice (below B_opt, so within the latency cap), says so in the explanation and
a warning, and sizes the KV cache and the vLLM flags for that batch; a slice too small even for
B = 1 is still refused with the sizes. Instances: Qwen2.5-0.5B on A100-40GB 1g.5gb, Qwen3-30B-A3B
on H200 3g.71gb (issue reports kept in ../shared/cases/memory-contract/ 12 and 07)."""

from __future__ import annotations

from typing import Any

import pytest
from test_badinput_pure import simulated_profile

from llmpack.advisor.options import options_for_spec
from llmpack.advisor.recommend import advise
from llmpack.api.llmdeployment import LLMDeploymentSpec
from llmpack.hardware import lookup_gpu
from llmpack.hardware.cluster import ClusterFacts
from llmpack.planner import decide as planner
from llmpack.planner.decide import Context
from llmpack.planner.refusal import Refused
from llmpack.render.plan import OwnerRef


def mig_node(product: str, memory_mib: int, slice_name: str, count: int, slice_mib: int) -> dict[str, Any]:
    resource = f"nvidia.com/mig-{slice_name}"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": "mig-a",
            "labels": {
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": product,
                "nvidia.com/gpu.memory": str(memory_mib),
                "nvidia.com/gpu.count": "1",
                "nvidia.com/mig.strategy": "mixed",
                f"nvidia.com/mig-{slice_name}.count": str(count),
                f"nvidia.com/mig-{slice_name}.memory": str(slice_mib),
            },
        },
        "status": {"capacity": {resource: str(count)}, "allocatable": {resource: str(count)}},
    }


QWEN_05B = {
    "model": {"name": "Qwen/Qwen2.5-0.5B-Instruct"},
    "workload": {"promptTokens": 512, "outputTokens": 256},
    "sharing": {"mode": "mig"},
    "gpu": {"product": "NVIDIA-A100-SXM4-40GB"},
}
QWEN3_MOE = {
    "model": {
        "name": "Qwen/Qwen3-30B-A3B-Instruct-2507",
        "architecture": {
            "numLayers": 48,
            "numKvHeads": 4,
            "headDim": 128,
            "parameterBytes": 61064245248,
            "maxPositionEmbeddings": 262144,
        },
    },
    "workload": {"promptTokens": 2000, "outputTokens": 1000},
    "sharing": {"mode": "mig"},
    "gpu": {"product": "NVIDIA-H200"},
}


def plan(spec: dict[str, Any], node: dict[str, Any]):
    parsed = LLMDeploymentSpec.model_validate(spec)
    context = Context(
        name="x",
        namespace="team-a",
        owner=OwnerRef(api_version="llmpack.io/v1alpha1", kind="LLMDeployment", name="x", uid="u"),
        profiler_image="p",
        serving_image="s",
    )
    profile = simulated_profile(parsed)
    return parsed, profile, planner.decide(parsed, profile, ClusterFacts.from_objects([node]), context)


@pytest.mark.parametrize(
    ("spec", "node", "slice_name"),
    [
        (QWEN_05B, mig_node("NVIDIA-A100-SXM4-40GB", 40960, "1g.5gb", 7, 5120), "1g.5gb"),
        (QWEN3_MOE, mig_node("NVIDIA-H200", 143771, "3g.71gb", 2, 71936), "3g.71gb"),
    ],
    ids=["qwen2.5-0.5b-a100-1g.5gb", "qwen3-30b-a3b-h200-3g.71gb"],
)
def test_the_largest_batch_a_slice_holds_is_served_and_said(spec, node, slice_name):
    parsed, profile, decision = plan(spec, node)
    assert not isinstance(decision, Refused), decision.message
    status = decision.status
    advised = advise(profile, options_for_spec(parsed), lookup_gpu(parsed.gpu.product))
    assert status.mode == "mig" and status.mig_profile == slice_name
    assert 1 <= status.max_num_seqs < advised.b_opt
    # the largest: one more sequence would not fit the slice
    bigger = {**spec, "advisor": {"maxNumSeqs": status.max_num_seqs + 1}}
    assert isinstance(plan(bigger, node)[2], Refused)
    assert f"--max-num-seqs {status.max_num_seqs}" in " ".join(decision.plan.vllm_args)
    (warning,) = [m for reason, m in decision.warnings if reason == "BatchReducedToFitMIG"]
    assert f"B_opt = {advised.b_opt} does not fit the largest MIG slice offered" in warning
    assert "the largest batch one replica holds in the memory offered" in status.explanation


def test_a_slice_too_small_for_one_sequence_is_still_refused_with_the_sizes():
    node = mig_node("NVIDIA-H200", 143771, "1g.18gb", 7, 16384)
    _, _, decision = plan(QWEN3_MOE, node)
    assert isinstance(decision, Refused)
    assert "the largest offered slice, 1g.18gb, holds" in decision.message
