"""--gpu-memory-utilization and the MPS caps against vLLM's start-up check, per sharing mode, and
the GPU's memory as the cluster reports it (nvidia.com/gpu.memory).

vLLM 0.32 (vllm/v1/worker/utils.py request_memory) refuses to start when the free memory it sees
is below ceil(total x --gpu-memory-utilization), also with --kv-cache-memory-bytes. `passes`
below is that rule; tests/engine/test_request_memory.py runs vLLM's own function on what the
operator renders.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from llmpack.advisor.replica_memory import STARTUP_CHECK_MARGIN_BYTES, ReplicaDoesNotFit, replica_memory
from llmpack.api.llmdeployment import LLMDeploymentSpec
from llmpack.controller.reconciler import OperatorConfig
from llmpack.hardware import GPUS, lookup_gpu
from llmpack.hardware.cluster import ClusterFacts, NodeFacts
from llmpack.hardware.sharing import MIG, Exclusive, MPSThroughDevicePlugin, MPSThroughDRA, Sharing
from llmpack.planner import decide as planner
from llmpack.planner.decide import Context
from llmpack.planner.planning import candidates, choose, profiling_max_model_len
from llmpack.planner.refusal import Refused
from llmpack.profiler.facts import ArchitectureOverride, ProfileRequest
from llmpack.profiler.simulated import SimulatedBackend
from llmpack.render.plan import OwnerRef

MIB = 1 << 20
GIB = 1 << 30
H100 = "NVIDIA-H100-80GB-HBM3"
OPT = "facebook/opt-1.3b"
H100_REPORTED_MIB = 81_559  # NVML's total for an H100 80GB HBM3, GFD's nvidia.com/gpu.memory
ROOT = Path(__file__).resolve().parents[2]
OWNER = OwnerRef(api_version="llmpack.io/v1alpha1", kind="LLMDeployment", name="m", uid="u-1")


def passes(total: int, free: int, utilization: float) -> bool:
    """vLLM's request_memory: requested = ceil(total x utilization) must be free."""
    return free >= math.ceil(total * utilization)


def node(name: str, labels: dict[str, str], allocatable: dict[str, int]) -> NodeFacts:
    return NodeFacts(name=name, labels=labels, allocatable={k: str(v) for k, v in allocatable.items()})


def gfd(product: str, memory_mib: int | None = H100_REPORTED_MIB, **extra: str) -> dict[str, str]:
    labels = {"nvidia.com/gpu.product": product, **extra}
    if memory_mib is not None:
        labels["nvidia.com/gpu.memory"] = str(memory_mib)
    return labels


def device_plugin_mps_cluster(replicas: int, gpus: int = 1, memory_mib: int | None = H100_REPORTED_MIB):
    facts = ClusterFacts()
    labels = gfd(
        H100 + "-SHARED",
        memory_mib,
        **{"nvidia.com/gpu.sharing-strategy": "mps", "nvidia.com/gpu.replicas": str(replicas)},
    )
    facts.nodes["s"] = node("s", labels, {"nvidia.com/gpu": gpus * replicas})
    return facts


def dra_cluster(memory_mib: int | None = H100_REPORTED_MIB) -> ClusterFacts:
    facts = ClusterFacts()
    facts.nodes["d"] = node("d", gfd(H100, memory_mib), {})
    facts.device_classes.add("gpu.nvidia.com")
    facts.dra_devices["d"] = 8
    return facts


def simulated_profile(spec: LLMDeploymentSpec):
    request = ProfileRequest(
        model=spec.model.name,
        gpu_product=spec.gpu.product,
        dtype=spec.model.dtype,
        max_model_len=profiling_max_model_len(spec),  # the context the profiling Job is given
        prompt_tokens=spec.workload.prompt_tokens,
        output_tokens=spec.workload.output_tokens,
        architecture=ArchitectureOverride(),
    )
    backend = SimulatedBackend(request)
    backend.start()
    return backend.profile([backend.measure(b) for b in spec.advisor.candidate_batch_sizes], [])


def plan_through_the_operator(spec_data: dict, cluster: ClusterFacts):
    """The operator's own decision (planner.serving): the GPU as the cluster reports it, advise, plan."""
    spec = LLMDeploymentSpec.model_validate(spec_data)
    profile = simulated_profile(spec)
    config = OperatorConfig()
    context = Context("m", "ns", OWNER, config.profiler_image, config.serving_image)
    decision = planner.serving(spec, profile, cluster, context)
    return planner.target_gpu(spec, cluster), decision.plan, decision.status


# -- the two reported instances ------------------------------------------------------------------


def test_readme_demo_dra_util_fits_under_the_claims_limit():
    """examples/opt-1.3b-mps-dra.yaml: the claim pins each replica to its memory (23,761 MiB);
    llmpack rendered --gpu-memory-utilization 0.329 of the 81,559 MiB H100 (26,833 MiB asked to
    be free under a 23,761 MiB cap: every replica would fail). Now 0.278: (23,761 MiB - a CUDA
    context's margin) / 81,559 MiB."""
    body = yaml.safe_load((ROOT / "examples" / "opt-1.3b-mps-dra.yaml").read_text())
    gpu, plan, status = plan_through_the_operator(body["spec"], dra_cluster())
    assert (plan.mode, plan.mps_provider) == ("mps", "dra")
    assert gpu.reported_memory_mib == H100_REPORTED_MIB
    limit = plan.mps_pinned_memory_bytes
    assert limit == status.per_replica_memory_bytes and math.ceil(limit / MIB) == 23_761
    assert status.gpu_memory_utilization == 0.278
    total = H100_REPORTED_MIB * MIB
    assert passes(total, limit, status.gpu_memory_utilization)
    assert passes(total, limit - STARTUP_CHECK_MARGIN_BYTES, status.gpu_memory_utilization)
    assert not passes(total, limit, 0.329)  # what was rendered before
    assert "pinned to 23,761 MiB" in status.explanation and "0.278" in status.explanation


def test_device_plugin_split_sets_the_cap_not_llmpacks_replica_count():
    """Qwen2.5-0.5B-Instruct, 256/256, mps/devicePlugin on an H100 whose device plugin splits each
    GPU 10 ways: each client is pinned to 81,559 MiB / 10 = 8,155 MiB. llmpack's util came from
    its own replica count (0.123 here, 0.246 in the report: 9.6-19 GiB asked to be free); now
    0.083 = the replica's 6.7 GiB of the 81,559 MiB GPU."""
    spec = {
        "model": {"name": "Qwen/Qwen2.5-0.5B-Instruct"},
        "workload": {"promptTokens": 256, "outputTokens": 256},
        "sharing": {"mode": "mps", "mpsProvider": "devicePlugin"},
        "gpu": {"product": H100},
    }
    _, plan, status = plan_through_the_operator(spec, device_plugin_mps_cluster(replicas=10))
    assert (plan.mode, plan.mps_provider, plan.gpu_slices_per_replica) == ("mps", "devicePlugin", 1)
    cap = H100_REPORTED_MIB * MIB // 10 // MIB * MIB
    assert cap == 8_155 * MIB
    assert status.per_replica_memory_bytes <= cap
    assert status.gpu_memory_utilization == 0.083
    assert passes(H100_REPORTED_MIB * MIB, cap - STARTUP_CHECK_MARGIN_BYTES, status.gpu_memory_utilization)
    assert not passes(H100_REPORTED_MIB * MIB, cap, 0.123) and not passes(H100_REPORTED_MIB * MIB, cap, 0.246)
    assert "8,155 MiB" in status.explanation and "nvidia.com/gpu.replicas 10" in status.explanation


def test_a_replica_larger_than_the_device_plugins_cap_is_refused_naming_what_to_change():
    spec = {
        "model": {"name": "facebook/opt-1.3b"},
        "workload": {"promptTokens": 256, "outputTokens": 256},
        "sharing": {"mode": "mps", "mpsProvider": "devicePlugin"},
        "gpu": {"product": H100},
    }
    cluster = device_plugin_mps_cluster(replicas=16)
    parsed = LLMDeploymentSpec.model_validate(spec)
    profile = simulated_profile(parsed)
    rec = planner.recommend(parsed, profile, planner.target_gpu(parsed, cluster))
    assert rec.per_replica_memory_bytes > H100_REPORTED_MIB * MIB // 16
    config = OperatorConfig()
    refused = planner.serving(
        parsed, profile, cluster, Context("m", "ns", OWNER, config.profiler_image, "img")
    )
    assert isinstance(refused, Refused)
    message = refused.message
    assert "5,097 MiB" in message and "nvidia.com/gpu.replicas 16" in message
    for fix in ("advisor.maxNumSeqs", "fewer nvidia.com/gpu.replicas", "sharing.mpsProvider dra"):
        assert fix in message


# -- the one decision, mode by mode ----------------------------------------------------------------


@pytest.mark.parametrize("product", sorted(GPUS))
@pytest.mark.parametrize("need_gib", [0.5, 1.5, 3, 7, 15, 30, 60])
def test_every_mode_passes_vllms_check_or_refuses(product: str, need_gib: float):
    """For every GPU of the catalogue and replica size: the utilisation passes vLLM's check on the
    memory each mode presents (with a CUDA context already taken), and the replica fits under its
    cap; or the mode is refused with a reason."""
    gpu = lookup_gpu(product)
    need = int(need_gib * GIB)
    views: list[tuple[Sharing, dict]] = [(Exclusive(), {}), (MPSThroughDRA(), {"replicas_per_gpu": 2})]
    views += [(MPSThroughDevicePlugin(r), {"device_plugin_replicas": r}) for r in (2, 4, 7, 10, 48)]
    views += [(MIG(p), {"mig": p}) for p in gpu.mig_profiles]
    for sharing, extra in views:
        mode, provider = sharing.mode, sharing.provider
        try:
            memory = replica_memory(sharing, gpu, need, replicas_per_gpu=extra.get("replicas_per_gpu", 1))
        except ReplicaDoesNotFit as err:
            assert err.reason == "ReplicaDoesNotFit"
            assert "use" in str(err) or "lower" in str(err)
            continue
        assert need <= memory.limit_bytes
        free = memory.limit_bytes - STARTUP_CHECK_MARGIN_BYTES
        assert passes(memory.total_bytes, free, memory.gpu_memory_utilization), (mode, provider, extra)
        assert memory.requested_bytes <= free
        assert 0 < memory.gpu_memory_utilization <= 1
        if mode == "mig":
            assert memory.total_bytes == extra["mig"].nominal_bytes
        else:
            assert memory.total_bytes == gpu.reported_memory_mib * MIB
        if provider == "devicePlugin":
            assert (
                memory.limit_bytes
                == gpu.reported_memory_mib * MIB // extra["device_plugin_replicas"] // MIB * MIB
            )
        if provider == "dra":
            assert memory.mps_pinned_memory_bytes == memory.limit_bytes


def test_dra_limits_of_all_replicas_must_fit_on_the_gpu():
    gpu = lookup_gpu(H100)
    with pytest.raises(ReplicaDoesNotFit, match=r"advisor\.replicasPerGPU"):
        replica_memory(MPSThroughDRA(), gpu, 30 * GIB, replicas_per_gpu=3)
    assert (
        replica_memory(MPSThroughDRA(), gpu, 30 * GIB, replicas_per_gpu=2).mps_pinned_memory_bytes == 30 * GIB
    )


def test_a_tiny_dra_replica_still_gets_a_limit_the_check_can_pass():
    memory = replica_memory(MPSThroughDRA(), lookup_gpu(H100), 512 * MIB, replicas_per_gpu=4)
    assert memory.mps_pinned_memory_bytes > 512 * MIB
    assert passes(
        memory.total_bytes, memory.limit_bytes - STARTUP_CHECK_MARGIN_BYTES, memory.gpu_memory_utilization
    )


def test_mig_utilisation_is_of_the_slice():
    gpu = lookup_gpu(H100)
    slice_ = gpu.mig_profile("2g.20gb")
    memory = replica_memory(MIG(slice_), gpu, 12 * GIB)
    assert memory.total_bytes == 20 * GIB
    assert memory.gpu_memory_utilization == math.floor(12 * GIB / (20 * GIB) * 1000) / 1000 == 0.6
    with pytest.raises(ReplicaDoesNotFit, match=r"larger sharing\.migProfile"):
        replica_memory(MIG(slice_), gpu, 20 * GIB)


# -- the GPU's memory as the cluster reports it ------------------------------------------------


def test_the_nodes_reported_memory_replaces_the_catalogues():
    facts = device_plugin_mps_cluster(replicas=4, memory_mib=80_000)
    facts.nodes["a"] = node("a", gfd(H100, 81_000), {"nvidia.com/gpu": 8})
    offers = facts.offers(H100)
    assert offers.gpu_memory_mib == 80_000  # the smallest: a replica may land on either node
    gpu = planner.target_gpu(
        LLMDeploymentSpec.model_validate({"model": {"name": "facebook/opt-1.3b"}}), facts
    )
    assert gpu.reported_memory_mib == 80_000
    memory = replica_memory(MPSThroughDevicePlugin(4), gpu, 10 * GIB)
    assert memory.limit_bytes == 20_000 * MIB and memory.total_bytes == 80_000 * MIB


def test_without_the_label_the_catalogues_reported_total_is_used_not_the_nominal_size():
    facts = device_plugin_mps_cluster(replicas=4, memory_mib=None)
    assert facts.offers(H100).gpu_memory_mib is None
    gpu = planner.target_gpu(
        LLMDeploymentSpec.model_validate({"model": {"name": "facebook/opt-1.3b"}}), facts
    )
    assert gpu == lookup_gpu(H100) and gpu.reported_memory_mib == H100_REPORTED_MIB
    memory = replica_memory(MPSThroughDevicePlugin(4), gpu, 10 * GIB)
    assert memory.limit_bytes == 20_389 * MIB  # 81,559 / 4, not 80 GiB / 4 = 20,480 MiB


def test_mig_nodes_labels_do_not_set_the_whole_gpus_memory():
    """Under MIG's single strategy GFD's nvidia.com/gpu.memory is the slice's: only nodes that
    offer whole or MPS-shared GPUs of the product say what the GPU holds."""
    facts = ClusterFacts()
    facts.nodes["m"] = node(
        "m", gfd(H100, 9_856, **{"nvidia.com/mig.strategy": "mixed"}), {"nvidia.com/mig-1g.10gb": 7}
    )
    facts.nodes["x"] = node("x", gfd(H100 + "-MIG-1g.10gb", 9_856), {"nvidia.com/gpu": 7})
    assert facts.offers(H100).gpu_memory_mib is None


def test_the_replicas_label_counts_clients_per_gpu_and_capacity_counts_gpus_times_replicas():
    """nvidia.com/gpu.replicas is the sharing config's replicas (per GPU, as the device plugin's
    labeler writes it); nvidia.com/gpu capacity is GPUs x replicas."""
    offers = device_plugin_mps_cluster(replicas=10, gpus=4).offers(H100)
    assert offers.device_plugin_mps_replicas == 10 and offers.device_plugin_mps_gpus == 4


def test_nodes_split_differently_plan_for_the_smallest_cap():
    facts = device_plugin_mps_cluster(replicas=4)
    labels = gfd(
        H100 + "-SHARED", **{"nvidia.com/gpu.sharing-strategy": "mps", "nvidia.com/gpu.replicas": "8"}
    )
    facts.nodes["t"] = node("t", labels, {"nvidia.com/gpu": 16})
    offers = facts.offers(H100)
    assert offers.device_plugin_mps_replicas == 8 and offers.device_plugin_mps_gpus == 3
    spec = LLMDeploymentSpec.model_validate(
        {"model": {"name": "facebook/opt-1.3b"}, "sharing": {"mode": "mps", "mpsProvider": "devicePlugin"}}
    )
    refusals: list[str] = []
    found = candidates(spec, lookup_gpu(H100), offers, 12 * GIB, 4, lambda r, m: (None, None), refusals)
    assert found == [] and "10,194 MiB" in refusals[0]
    refused = choose(spec, found, offers, refusals)
    assert isinstance(refused, Refused) and "nvidia.com/gpu.replicas 8" in refused.message
