"""vLLM's own start-up memory check on every replica llmpack renders, with the memory each sharing
mode presents to the replica's process.

vLLM 0.32 (`vllm/v1/worker/utils.py::request_memory`) refuses to start when the free memory is
below ceil(total x --gpu-memory-utilization), also when --kv-cache-memory-bytes sizes the KV cache
(../shared/REAL-ENGINE.md, "vLLM's own start-up memory check"). What the process sees depends on
the sharing mode; the snapshots here are built from the rendered objects and the nodes' labels,
not from the planner's figures:

- whole GPU (exclusive): total = the GPU, free = the GPU;
- MPS through DRA: free = the claim's per-client pinned limit (read from the rendered
  ResourceClaimTemplate), total = the whole GPU;
- MPS through the device plugin: free = the node's nvidia.com/gpu.memory / its
  nvidia.com/gpu.replicas (what the plugin's MPS daemon pins every client to), total = the GPU;
- MIG: total = free = the slice.

"The GPU" is the node's nvidia.com/gpu.memory (the NVML total, the most CUDA can report) and,
as a second snapshot, the smaller total CUDA hands out (the catalogue's estimate); each snapshot
is checked as presented and again after the process's own CUDA context (0.66 GiB, the most the
paper's logs show) is taken, as it is when vLLM measures.

Each rendered container's --gpu-memory-utilization goes through vLLM's function in one engine
process, for every example in examples/, every sharing mode, the reported instances (the README
demo's DRA caps, a device plugin splitting H100s 10 ways) and a matrix of other GPUs and models.
The values llmpack rendered before the fix must be refused by the same function, so the check
is not vacuous.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from test_vllm_args import (
    BASE_SPEC,
    EXAMPLES,
    MODE_SPECS,
    NAMESPACE,
    container_commands,
    fake_cluster,
    simulated_profile,
    testbed,
)

import engine
from llmpack.api.llmdeployment import LLMDeploymentSpec
from llmpack.controller.reconciler import OperatorConfig
from llmpack.hardware import lookup_gpu
from llmpack.hardware.cluster import ClusterFacts
from llmpack.planner import decide as planner
from llmpack.planner.decide import Context
from llmpack.planner.refusal import Refused
from llmpack.render import render_profiling, render_serving
from llmpack.render.plan import OwnerRef

MIB = 1 << 20
GIB = 1 << 30
CUDA_CONTEXT_BYTES = round(0.66 * GIB)  # the largest CUDA context in the paper's vLLM logs
CHECK_TIMEOUT_S = 300
H100 = "NVIDIA-H100-80GB-HBM3"
MEMORY_LABEL = "nvidia.com/gpu.memory"
REPLICAS_LABEL = "nvidia.com/gpu.replicas"

# vLLM's request_memory on each case, in the engine's own environment: a memory snapshot as
# cudaMemGetInfo would fill it, and a cache config with the rendered utilisation.
CHECKER = r"""
import json, sys
import vllm
from vllm.config import CacheConfig
from vllm.utils.mem_utils import MemorySnapshot
from vllm.v1.worker.utils import request_memory

results = []
for case in json.load(sys.stdin):
    snapshot = MemorySnapshot(device="cpu", auto_measure=False)
    snapshot.total_memory, snapshot.free_memory = case["total"], case["free"]
    try:
        requested = request_memory(snapshot, CacheConfig(gpu_memory_utilization=case["utilization"]))
        results.append({"name": case["name"], "ok": True, "requested": requested})
    except ValueError as err:
        results.append({"name": case["name"], "ok": False, "error": str(err)})
print("RESULT " + json.dumps({"vllm_version": vllm.__version__, "results": results}))
"""


@dataclass(frozen=True)
class Case:
    name: str
    mode: str  # exclusive | mps/dra | mps/devicePlugin | mig | before-the-fix
    total: int
    free: int
    utilization: float


# -- clusters ------------------------------------------------------------------------------------


def product_cluster(product: str, memory_mib: int, device_plugin_replicas: int) -> ClusterFacts:
    """The testbed's node kinds for another product, labelled with that product's memory."""
    gpu = lookup_gpu(product)
    nodes = [
        testbed.whole_gpu_node("whole", gpus=2, product=product, memory_mib=memory_mib),
        testbed.mps_node("mps", gpus=2, replicas=device_plugin_replicas, product=product),
        testbed.dra_node("dra", gpus=2, product=product),
    ]
    if gpu.mig_profiles:
        nodes.append(
            testbed.mig_node("mig", {p.name: p.max_instances for p in gpu.mig_profiles}, product=product)
        )
    for node in nodes:
        node["metadata"]["labels"][MEMORY_LABEL] = str(memory_mib)
    return ClusterFacts.from_objects(
        [
            *nodes,
            testbed.gpu_device_class(),
            testbed.gpu_resource_slice("dra", gpus=2, memory=f"{memory_mib}Mi"),
        ]
    )


# -- the operator's path -------------------------------------------------------------------------


def render(
    name: str, spec_data: dict[str, Any], cluster: ClusterFacts
) -> tuple[Any, list[dict[str, Any]]] | Refused:
    """`spec_data` through the reconciler's own steps (test_vllm_args.render_deployment's path):
    the profiling Job, the simulated profile it would publish, the GPU as the nodes report it,
    advise, plan, render_serving. Refused where the operator would refuse."""
    config = OperatorConfig()
    spec = LLMDeploymentSpec.model_validate(spec_data)
    owner = OwnerRef(api_version="llmpack.io/v1alpha1", kind="LLMDeployment", name=name, uid=f"uid-{name}")
    context = Context(name, NAMESPACE, owner, config.profiler_image, config.serving_image)
    (job,) = [
        o for o in render_profiling(planner.profiling(spec, cluster, context).plan) if o["kind"] == "Job"
    ]
    profile = simulated_profile(job)
    decision = planner.serving(spec, profile, cluster, context)
    if isinstance(decision, Refused):
        return decision
    return decision.plan, render_serving(decision.plan)


def mebibytes(quantity: str) -> int:
    assert quantity.endswith("Mi"), quantity
    return int(quantity.removesuffix("Mi")) * MIB


def node_gpu_memory(cluster: ClusterFacts, product: str) -> int:
    """The smallest nvidia.com/gpu.memory among the nodes labelled with the product (MiB -> bytes)."""
    values = [
        int(n.labels[MEMORY_LABEL])
        for n in cluster.nodes.values()
        if n.labels.get("nvidia.com/gpu.product", "").removesuffix("-SHARED") == product
        and MEMORY_LABEL in n.labels
    ]
    return min(values) * MIB


def device_plugin_client_limit(cluster: ClusterFacts, product: str) -> int:
    """What the device plugin's MPS daemon pins each client to: the GPU's memory / the node's
    replicas per GPU, in whole MiB; the smallest over the nodes that share the product."""
    return min(
        int(n.labels[MEMORY_LABEL]) * MIB // int(n.labels[REPLICAS_LABEL]) // MIB * MIB
        for n in cluster.nodes.values()
        if n.labels.get("nvidia.com/gpu.product") == product + "-SHARED"
    )


def snapshots(
    where: str, mode: str, total: int, cuda_total: int, free: int, utilization: float
) -> list[Case]:
    """The mode's snapshot, with the NVML and the CUDA total, before and after the CUDA context."""
    cases = []
    for total_name, seen_total in (("nvml-total", total), ("cuda-total", cuda_total)):
        seen_free = min(free, seen_total)
        cases.append(Case(f"{where}/{total_name}", mode, seen_total, seen_free, utilization))
        cases.append(
            Case(
                f"{where}/{total_name}+context", mode, seen_total, seen_free - CUDA_CONTEXT_BYTES, utilization
            )
        )
    return cases


def replica_cases(where: str, plan: Any, objects: list[dict[str, Any]], cluster: ClusterFacts) -> list[Case]:
    """One set of snapshots per vLLM process the rendered objects run."""
    gpu = lookup_gpu(plan.gpu_product)
    total = node_gpu_memory(cluster, plan.gpu_product)
    cuda_total = gpu.with_reported_memory(total // MIB).usable_memory_bytes
    mode = f"{plan.mode}/{plan.mps_provider}" if plan.mps_provider else plan.mode
    if mode == "mps/dra":
        (claim,) = [o for o in objects if o["kind"] == "ResourceClaimTemplate"]
        (config,) = claim["spec"]["spec"]["devices"]["config"]
        free = mebibytes(
            config["opaque"]["parameters"]["sharing"]["mpsConfig"]["defaultPinnedDeviceMemoryLimit"]
        )
    elif mode == "mps/devicePlugin":
        free = device_plugin_client_limit(cluster, plan.gpu_product)
    elif mode == "mig":
        slice_ = gpu.mig_profile(plan.mig_profile)
        total = cuda_total = free = slice_.memory_bytes  # the slice is the device
    else:
        free = total
    cases = []
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        for command in container_commands(where, container, {}):
            argv = command.argv
            utilization = float(argv[argv.index("--gpu-memory-utilization") + 1])
            cases += snapshots(command.name, mode, total, cuda_total, free, utilization)
    return cases


# -- what is checked -----------------------------------------------------------------------------

QWEN_05B = "Qwen/Qwen2.5-0.5B-Instruct"
# (model, workload) x (product, NVML MiB as GFD labels it, device plugin replicas per GPU)
OTHER_MODELS = [
    ("facebook/opt-1.3b", 256, 256),
    (QWEN_05B, 256, 256),
    ("Qwen/Qwen2.5-1.5B-Instruct", 512, 256),
]
OTHER_GPUS = [
    ("NVIDIA-A100-SXM4-40GB", 40_960, 4),
    ("NVIDIA-L4", 23_034, 2),
    ("NVIDIA-H200", 143_771, 7),
    ("NVIDIA-A100-80GB-PCIe", 81_920, 10),
]
OTHER_MODES = {
    "exclusive": {"mode": "exclusive"},
    "mps-dra": {"mode": "mps", "mpsProvider": "dra"},
    "mps-device-plugin": {"mode": "mps", "mpsProvider": "devicePlugin"},
    "mig": {"mode": "mig"},
}


def qwen_on_a_10_way_split_h100() -> tuple[str, dict[str, Any], ClusterFacts]:
    """The report: Qwen2.5-0.5B-Instruct, 256/256, mps/devicePlugin, H100 80GB split 10 ways."""
    spec = {
        "model": {"name": QWEN_05B},
        "workload": {"promptTokens": 256, "outputTokens": 256},
        "sharing": {"mode": "mps", "mpsProvider": "devicePlugin"},
        "gpu": {"product": H100, "count": 1},
    }
    return (
        "qwen-0.5b-device-plugin-10-way",
        spec,
        ClusterFacts.from_objects([testbed.mps_node("mps", gpus=1, replicas=10)]),
    )


@dataclass
class Gathered:
    cases: list[Case]
    modes: dict[str, str]  # where -> mode/provider of the plan
    refused: dict[str, str]  # where -> the operator's message


def gather() -> Gathered:
    cases: list[Case] = []
    modes: dict[str, str] = {}
    refused: dict[str, str] = {}

    def one(where: str, name: str, spec: dict[str, Any], cluster: ClusterFacts) -> None:
        rendered = render(name, spec, cluster)
        if isinstance(rendered, Refused):
            refused[where] = f"{rendered.reason}: {rendered.message}"
            return
        plan, objects = rendered
        modes[where] = f"{plan.mode}/{plan.mps_provider}" if plan.mps_provider else plan.mode
        cases.extend(replica_cases(where, plan, objects, cluster))

    testbed_cluster = fake_cluster()
    for path in EXAMPLES:
        body = yaml.safe_load(path.read_text())
        one(f"examples/{path.name}", body["metadata"]["name"], body["spec"], testbed_cluster)
    for mode, overrides in MODE_SPECS.items():
        one(f"mode-{mode}", f"opt-{mode}", {**BASE_SPEC, **overrides}, testbed_cluster)
    name, spec, cluster = qwen_on_a_10_way_split_h100()
    one(name, name, spec, cluster)
    for product, memory_mib, replicas in OTHER_GPUS:
        cluster = product_cluster(product, memory_mib, replicas)
        for model, prompt, output in OTHER_MODELS:
            for mode, sharing in OTHER_MODES.items():
                if mode == "mig" and not lookup_gpu(product).mig_profiles:
                    continue
                spec = {
                    "model": {"name": model},
                    "workload": {"promptTokens": prompt, "outputTokens": output},
                    "sharing": sharing,
                    "gpu": {"product": product, "count": 1},
                }
                one(f"{product}/{model}/{mode}", "m", spec, cluster)
    return Gathered(cases, modes, refused)


GATHERED = gather()
CASES = {c.name: c for c in GATHERED.cases}

# What llmpack rendered before the fix, with the memory the mode presents: each must be refused
# by vLLM, or the test above could pass without checking anything.
H100_TOTAL = 81_559 * MIB
BEFORE_THE_FIX = [
    # README demo: the claim pins 23,761 MiB, util 0.329 of the whole H100
    Case("before/examples/opt-1.3b-mps-dra.yaml", "before-the-fix", H100_TOTAL, 23_761 * MIB, 0.329),
    # Qwen 0.5B under a 10-way device-plugin split (8,155 MiB a client): 0.123 (this tree), 0.246 (report)
    Case("before/qwen-0.5b-device-plugin-10-way/0.123", "before-the-fix", H100_TOTAL, 8_155 * MIB, 0.123),
    Case("before/qwen-0.5b-device-plugin-10-way/0.246", "before-the-fix", H100_TOTAL, 8_155 * MIB, 0.246),
]


@pytest.fixture(scope="module")
def verdicts(vllm_python) -> dict[str, Any]:
    """Every case through vLLM's request_memory, in one engine process."""
    cases = [*GATHERED.cases, *BEFORE_THE_FIX]
    done = subprocess.run(
        [str(vllm_python), "-c", CHECKER],
        input=json.dumps(
            [{"name": c.name, "total": c.total, "free": c.free, "utilization": c.utilization} for c in cases]
        ),
        capture_output=True,
        text=True,
        env=engine.engine_env(),
        timeout=CHECK_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"the check failed ({done.returncode}):\n{done.stderr[-4000:]}"
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    report = json.loads(line.removeprefix("RESULT "))
    assert [r["name"] for r in report["results"]] == [c.name for c in cases]
    assert report["vllm_version"].startswith("0.32"), report["vllm_version"]
    return {r["name"]: r for r in report["results"]}


@pytest.mark.parametrize("name", list(CASES))
def test_vllm_starts_with_the_rendered_utilisation(name: str, verdicts: dict[str, Any]) -> None:
    case, verdict = CASES[name], verdicts[name]
    assert verdict["ok"], (
        f"{name}: --gpu-memory-utilization {case.utilization} with {case.free / MIB:,.0f} MiB free of "
        f"{case.total / MIB:,.0f} MiB ({case.mode}): vLLM says {verdict.get('error')}"
    )


@pytest.mark.parametrize("case", BEFORE_THE_FIX, ids=lambda c: c.name)
def test_vllm_refuses_what_was_rendered_before(case: Case, verdicts: dict[str, Any]) -> None:
    verdict = verdicts[case.name]
    assert not verdict["ok"] and "less than desired GPU memory utilization" in verdict["error"], verdict


def test_every_mode_and_example_is_checked() -> None:
    """Not vacuous: every example and every sharing mode render replicas that are checked, and so
    do the reported device-plugin split and other GPUs in every mode."""
    checked = {c.name.split("/serving")[0].split("/vllm")[0] for c in GATHERED.cases}
    for path in EXAMPLES:
        assert f"examples/{path.name}" in GATHERED.modes, GATHERED.refused.get(f"examples/{path.name}")
    assert {GATHERED.modes[f"mode-{m}"] for m in MODE_SPECS} == {
        "exclusive",
        "mps/dra",
        "mps/devicePlugin",
        "mig",
    }
    assert GATHERED.modes["qwen-0.5b-device-plugin-10-way"] == "mps/devicePlugin"
    assert {c.mode for c in GATHERED.cases} == {"exclusive", "mps/dra", "mps/devicePlugin", "mig"}
    for product, _, _ in OTHER_GPUS:
        assert any(w.startswith(product) and m == "mps/dra" for w, m in GATHERED.modes.items()), product
    assert checked


def test_what_the_operator_refuses_says_what_to_change() -> None:
    """A combination that does not fit (a device-plugin cap or a slice too small) is refused up
    front, with the change to make, instead of rendering replicas that cannot start."""
    for where, message in GATHERED.refused.items():
        assert any(word in message for word in ("lower", "use ", "Lower", "choose", "add nodes")), (
            where,
            message,
        )
