"""Planning: what the cluster offers per mode, which mode is chosen, and the profile key."""

from __future__ import annotations

from llmpack.api.llmdeployment import LLMDeploymentSpec
from llmpack.hardware import lookup_gpu
from llmpack.hardware.cluster import ClusterFacts, NodeFacts
from llmpack.planner.planning import (
    candidates,
    choose,
    profile_key,
    profiling_plan,
    serving_plan,
)
from llmpack.planner.refusal import Refused
from llmpack.render.plan import OwnerRef

H100 = "NVIDIA-H100-80GB-HBM3"
GIB = 1 << 30
OWNER = OwnerRef(api_version="llmpack.io/v1alpha1", kind="LLMDeployment", name="m", uid="u-1")


def node(name, labels, allocatable):
    return NodeFacts(name=name, labels=labels, allocatable={k: str(v) for k, v in allocatable.items()})


def cluster(*, whole=8, mig=None, mps_replicas=None, dra=0):
    facts = ClusterFacts()
    if whole:
        facts.nodes["a"] = node("a", {"nvidia.com/gpu.product": H100}, {"nvidia.com/gpu": whole})
    if mig:
        facts.nodes["m"] = node(
            "m",
            {"nvidia.com/gpu.product": H100, "nvidia.com/mig.strategy": "mixed"},
            {f"nvidia.com/mig-{p}": n for p, n in mig.items()},
        )
    if mps_replicas:
        facts.nodes["s"] = node(
            "s",
            {
                "nvidia.com/gpu.product": H100 + "-SHARED",
                "nvidia.com/gpu.sharing-strategy": "mps",
                "nvidia.com/gpu.replicas": str(mps_replicas),
            },
            {"nvidia.com/gpu": 2 * mps_replicas},
        )
    if dra:
        facts.nodes["d"] = node("d", {"nvidia.com/gpu.product": H100}, {})
        facts.device_classes.add("gpu.nvidia.com")
        facts.dra_devices["d"] = dra
    return facts


def spec(**overrides):
    return LLMDeploymentSpec.model_validate({"model": {"name": "facebook/opt-1.3b"}, **overrides})


def flat(tps_single=1000.0, gain_per_replica=0.2):
    def predict(replicas, mig):
        if mig:
            return 700.0 * 3, 20.0
        return tps_single * (1 + gain_per_replica * (replicas - 1)), 15.0 * replicas

    return predict


def test_offers_are_read_from_gfd_labels_and_capacity():
    offers = cluster(whole=8, mig={"1g.10gb": 7, "3g.40gb": 1}, mps_replicas=4, dra=8).offers(H100)
    assert offers.exclusive_gpus == 8
    assert offers.mig_slices == {"1g.10gb": 7, "3g.40gb": 1}
    assert offers.device_plugin_mps_replicas == 4 and offers.device_plugin_mps_gpus == 2
    assert offers.mps_dra_gpus == 8
    assert cluster().offers("NVIDIA-A100-SXM4-80GB").modes == []


def test_auto_takes_the_mode_with_most_predicted_tokens_per_gpu():
    gpu = lookup_gpu(H100)
    s = spec()
    offers = cluster(whole=8, dra=8).offers(H100)
    found = candidates(s, gpu, offers, 10 * GIB, 3, flat())
    assert {c.label for c in found} == {"exclusive", "mps/dra"}
    assert choose(s, found, offers).label == "mps/dra"


def test_device_plugin_mps_needs_the_whole_replica_within_one_slice():
    gpu = lookup_gpu(H100)
    s = spec(sharing={"mode": "mps", "mpsProvider": "devicePlugin"})
    offers = cluster(whole=0, mps_replicas=4).offers(H100)
    assert [c.label for c in candidates(s, gpu, offers, 15 * GIB, 8, flat())] == ["mps/devicePlugin"]
    assert candidates(s, gpu, offers, 30 * GIB, 8, flat()) == []
    refused = choose(s, candidates(s, gpu, offers, 30 * GIB, 8, flat()), offers)
    assert isinstance(refused, Refused) and "no node offers" in refused.message


def test_mig_takes_the_smallest_offered_slice_that_holds_a_replica_and_caps_replicas():
    gpu = lookup_gpu(H100)
    s = spec(sharing={"mode": "mig"}, gpu={"count": 2})
    offers = cluster(whole=0, mig={"1g.10gb": 7, "2g.20gb": 2, "3g.40gb": 1}).offers(H100)
    (chosen,) = candidates(s, gpu, offers, 12 * GIB, 1, flat())
    assert chosen.mig_profile == "2g.20gb"
    plan = serving_plan(
        name="m",
        namespace="ns",
        owner=OWNER,
        spec=s,
        chosen=chosen,
        vllm_args=["--max-num-seqs", "8"],
        per_replica_bytes=12 * GIB,
        image="img",
        b_opt=8,
    )
    assert plan.replicas == 2  # only two 2g.20gb slices exist, not 2 GPUs x 3
    assert plan.mig_profile == "2g.20gb"


def test_explicit_mode_the_cluster_lacks_is_refused_with_what_it_offers():
    gpu = lookup_gpu(H100)
    s = spec(sharing={"mode": "mig"})
    offers = cluster(whole=8).offers(H100)
    refused = choose(s, candidates(s, gpu, offers, GIB, 1, flat()), offers)
    assert isinstance(refused, Refused)
    assert "exclusive" in refused.message and refused.reason == "NoMatchingNodes"


def test_profile_key_ignores_serving_fields_and_tracks_measurement_fields():
    base = profile_key(spec(), "img:1")
    server_only = ["--served-model-name", "chat", "--enable-log-requests", "--uvicorn-log-level=debug"]
    assert profile_key(spec(serving={"port": 9000, "extraArgs": server_only}), "img:1") == base
    # flags that change the engine measure another engine: a profile of their own (issue 12, item 4)
    for engine_flags in (["--enforce-eager"], ["--kv-cache-dtype", "fp8"], ["--quantization=fp8"]):
        assert profile_key(spec(serving={"extraArgs": engine_flags}), "img:1") != base, engine_flags
    assert profile_key(spec(sharing={"mode": "exclusive"}), "img:1") == base
    assert profile_key(spec(workload={"promptTokens": 512}), "img:1") != base
    assert profile_key(spec(gpu={"product": "NVIDIA-A100-SXM4-80GB"}), "img:1") != base
    assert profile_key(spec(), "img:2") != base
    own = spec(profiling={"reuseCachedProfile": False})
    assert profile_key(own, "img:1", "uid-a") != profile_key(own, "img:1", "uid-b")


def test_non_default_advisor_settings_get_the_exhaustive_sweep():
    def sweep_of(s):
        args = profiling_plan(name="m", namespace="ns", owner=OWNER, spec=s, key="k" * 40, image="i").args
        return args[args.index("--sweep") + 1]

    assert sweep_of(spec()) == "adaptive"
    with_slo = spec(slo={"itlMeanMs": 20})
    assert sweep_of(with_slo) == "exhaustive"
    assert sweep_of(spec(advisor={"policy": "plateau"})) == "exhaustive"
    assert profile_key(with_slo, "img") != profile_key(spec(), "img")


def test_profiling_plan_names_fit_and_args_carry_the_measurement():
    s = spec(model={"name": "facebook/opt-1.3b", "revision": "main"})
    plan = profiling_plan(name="x" * 80, namespace="ns", owner=OWNER, spec=s, key="k" * 40, image="img")
    assert len(plan.name) <= 56 and len(plan.result_configmap) <= 63
    args = plan.args
    assert args[args.index("--model") + 1] == "facebook/opt-1.3b"
    assert args[args.index("--result-configmap") + 1] == plan.result_configmap
    assert args[args.index("--revision") + 1] == "main"


def _slice(node: str, driver: str, types: list[str]) -> dict:
    return {
        "metadata": {"name": f"{node}-{driver}-{len(types)}"},
        "spec": {
            "driver": driver,
            "nodeName": node,
            "devices": [
                {"name": f"d{i}", "attributes": {"type": {"string": t}}} for i, t in enumerate(types)
            ],
        },
    }


def test_dra_gpus_count_whole_gpus_of_the_nvidia_driver_summed_over_a_nodes_slices():
    """A node's MIG devices and other drivers' devices are not whole GPUs; a node may publish
    several slices; a deleted slice takes its GPUs away."""
    facts = ClusterFacts(
        {"n": NodeFacts("n", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, {})},
        device_classes={"gpu.nvidia.com"},
    )
    first = _slice("n", "gpu.nvidia.com", ["gpu", "gpu", "mig", "mig"])
    second = _slice("n", "gpu.nvidia.com", ["gpu"])
    assert facts.publish_slice("a", first) is True
    assert facts.publish_slice("b", second) is True
    assert facts.publish_slice("nic", _slice("n", "dra.net", ["gpu"] * 4)) is False
    assert facts.dra_devices == {"n": 3}
    assert facts.offers("NVIDIA-H100-80GB-HBM3").mps_dra_gpus == 3
    assert facts.publish_slice("a", first) is False, "the same slice again changes nothing"
    assert facts.publish_slice("a", None) is True
    assert facts.dra_devices == {"n": 1}
