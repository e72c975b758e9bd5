"""Fuzzing spec -> profile -> advise -> plan -> render against the real API server's validation.

hypothesis draws valid LLMDeployment specs (models of the built-in catalogue or custom
architectures, every GPU product of the catalogue, every sharing mode, counts, workloads, SLOs,
advisor settings, user pod knobs, names up to the 63 characters the CRD allows, dotted ones too). Each
goes through the reconciler exactly as the operator runs it, minus the API server (the fake API of
tests/unit/test_badinput_pure.py, a cluster that offers every mode for the product built from the
testbed's own node shapes, and the simulated profiler's profile for the spec). Then:

- nothing raises: a spec either reaches Deploying, or ends Failed with one of the documented
  answers (AdvisorRefused from AdvisorError, NoMatchingNodes from PlanningError, ContextTooLong
  before any profiling for a context or workload beyond the model's limit, WeightsDoNotFit for
  weights larger than the GPU, with nothing applied),
  or the simulated profiler reports that the model does not fit (what the profiling Job would say);
- the LLMDeployment itself and every object the operator would apply (the profiling Job and its
  identity, the Deployment, Service and claim template) pass a server-side dry-run apply on the
  testbed.

serving.port is capped at 65000 by the API so that the replicas of a DRA pod have ports above it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "unit"))

import testbed as testbed_lib  # noqa: E402  (hack/testbed, on sys.path through tests/conftest.py)
from test_badinput_pure import reconcile_through, simulated_profile  # noqa: E402

from llmpack.advisor.architectures import ARCHITECTURES  # noqa: E402
from llmpack.api.llmdeployment import MPS_MAX_CLIENTS, LLMDeploymentSpec  # noqa: E402
from llmpack.controller.client import KubeClient, KubeError  # noqa: E402
from llmpack.hardware import GPUS, lookup_gpu  # noqa: E402
from llmpack.hardware.cluster import ClusterFacts, NodeFacts  # noqa: E402
from llmpack.planner.decide import check_weights  # noqa: E402
from llmpack.planner.planning import context_refusal  # noqa: E402
from llmpack.profiler.backend import BackendError  # noqa: E402

pytestmark = pytest.mark.integration

ANSWERS = {"AdvisorRefused", "NoMatchingNodes"}  # user-facing refusals (AdvisorError, PlanningError)
CRD = ROOT / "crds" / "llmpack.io_llmdeployments.yaml"
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TALLY: dict[str, int] = {}


@pytest.fixture(scope="module")
def kube(testbed) -> KubeClient:
    client = KubeClient.from_config(str(testbed.kubeconfig))
    try:
        client.request(
            "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/llmdeployments.llmpack.io"
        )
    except KubeError as err:
        if not err.not_found:
            raise
        testbed.kubectl("apply", "--server-side", "-f", str(CRD))
        testbed.kubectl(
            "wait", "--for=condition=Established", "crd/llmdeployments.llmpack.io", "--timeout=30s"
        )
    return client


@pytest.fixture(scope="module", autouse=True)
def print_tally():
    yield
    if TALLY:
        print("\nfuzz: " + ", ".join(f"{k} {v}" for k, v in sorted(TALLY.items())))


def cluster_offering_everything(
    product: str, device_plugin_replicas: int, labels: dict[str, str] | None = None
) -> ClusterFacts:
    """The testbed's node shapes for `product`: whole GPUs, every MIG profile it has, device-plugin
    MPS, and DRA GPUs with their DeviceClass; `labels` (the spec's gpu.nodeSelector) on each."""
    gpu = GPUS[product]
    nodes = [
        testbed_lib.whole_gpu_node("whole", product=product),
        testbed_lib.mps_node("mps", replicas=device_plugin_replicas, product=product),
        testbed_lib.dra_node("dra", product=product),
    ]
    if gpu.mig_profiles:
        nodes.append(
            testbed_lib.mig_node("mig", {p.name: p.max_instances for p in gpu.mig_profiles}, product=product)
        )
    for node in nodes:
        node["metadata"]["labels"].update(labels or {})
    facts = {n["metadata"]["name"]: NodeFacts.from_node(n) for n in nodes}
    return ClusterFacts(facts, {testbed_lib.DRA_DRIVER}, {"dra": 8})


NAME = r"[a-z0-9]([-a-z0-9]{0,19}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,19}[a-z0-9])?){0,2}"
ENV_NAME = r"[A-Z][A-Z0-9_]{0,20}"
# Characters beyond the Basic Multilingual Plane are tested on their own below.
BMP = st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",))
TOLERATIONS = [
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    {
        "key": "dedicated",
        "operator": "Equal",
        "value": "llm",
        "effect": "NoExecute",
        "tolerationSeconds": 300,
    },
    {"operator": "Exists"},
]
NODE_SELECTORS = [{}, {"pool": "gpu"}, {"topology.kubernetes.io/zone": "eu-west-1a", "team": "ml"}]
RESOURCES = [
    None,
    {"requests": {"cpu": "4", "memory": "32Gi"}},
    {
        "requests": {"cpu": "500m", "memory": 16 * 2**30},
        "limits": {"memory": "64Gi", "ephemeral-storage": "1e11"},
    },
]
EXTRA_ARGS = [
    "--enforce-eager",
    "--trust-remote-code",
    "--disable-log-requests",
    "--swap-space=4",
    "--seed",
    "7",
]


@st.composite
def specs(draw) -> tuple[str, dict[str, Any]]:
    product = draw(st.sampled_from(sorted(GPUS)))
    gpu = GPUS[product]
    model: dict[str, Any]
    if draw(st.integers(0, 3)) == 0:
        model = {
            "name": draw(st.from_regex(r"[a-z]{2,8}/[a-z0-9][-a-z0-9.]{0,30}", fullmatch=True)),
            "architecture": {
                "numLayers": draw(st.integers(1, 64)),
                "numKvHeads": draw(st.integers(1, 64)),
                "headDim": draw(st.sampled_from([32, 64, 80, 96, 128, 256])),
                "parameterBytes": draw(st.integers(10**7, 40 * 10**9)),
            },
        }
    else:
        model = {"name": draw(st.sampled_from([a.hf_id for a in ARCHITECTURES]))}
    model["dtype"] = draw(st.sampled_from(["auto", "float16", "bfloat16", "float32"]))
    if draw(st.booleans()):
        model["revision"] = draw(
            st.sampled_from(["main", "v1.0", "0123456789abcdef0123456789abcdef01234567"])
        )
    if draw(st.booleans()):
        model["hfTokenSecretRef"] = {"name": "hf-token", "key": draw(st.sampled_from(["token", "HF_TOKEN"]))}
    prompt, output = draw(st.integers(1, 4096)), draw(st.integers(1, 2048))
    if draw(st.booleans()):
        model["maxModelLen"] = prompt + output + draw(st.integers(0, 4096))

    mode = draw(st.sampled_from(["auto", "mps", "mig", "exclusive"]))
    max_replicas = draw(st.integers(1, MPS_MAX_CLIENTS))
    sharing: dict[str, Any] = {
        "mode": mode,
        "mpsProvider": draw(st.sampled_from(["dra", "devicePlugin"])),
        "maxReplicasPerGPU": max_replicas,
    }
    if mode in ("mig", "auto") and gpu.mig_profiles and draw(st.booleans()):
        sharing["migProfile"] = draw(st.sampled_from([p.name for p in gpu.mig_profiles]))

    advisor: dict[str, Any] = {"policy": draw(st.sampled_from(["efficiency", "plateau"]))}
    if draw(st.booleans()):
        advisor["epsilon"] = draw(st.floats(0.01, 0.99))
    if draw(st.booleans()):
        advisor["latencyFactor"] = draw(st.floats(1.1, 20))
    if draw(st.booleans()):
        advisor["candidateBatchSizes"] = sorted(draw(st.sets(st.integers(1, 1024), min_size=1, max_size=12)))
    if draw(st.integers(0, 3)) == 0:
        advisor["maxNumSeqs"] = draw(st.integers(1, 512))
    if mode != "exclusive" and draw(st.integers(0, 3)) == 0:
        advisor["replicasPerGPU"] = draw(st.integers(1, max_replicas))
    advisor["minReplicaGain"] = draw(st.floats(0, 0.5))

    slo: dict[str, Any] = {}
    if draw(st.booleans()):
        slo[draw(st.sampled_from(["itlMeanMs", "itlP99Ms", "ttftP99Ms"]))] = draw(st.floats(0.5, 2000))

    replica_ports = max_replicas + 1  # the known renderer bug: see the module docstring
    serving: dict[str, Any] = {
        "port": draw(st.integers(1024, min(65000, 65535 - replica_ports))),
        "extraArgs": draw(st.lists(st.sampled_from(EXTRA_ARGS), max_size=3, unique=True)),
        "env": [
            {"name": n, "value": v}
            for n, v in draw(
                st.dictionaries(
                    st.from_regex(ENV_NAME, fullmatch=True), st.text(BMP, max_size=20), max_size=3
                )
            ).items()
            if n not in ("HOME", "HF_HOME", "USER", "LOGNAME", "HF_TOKEN", "VLLM_API_KEY")
        ],
    }
    if draw(st.booleans()):
        serving["apiKeySecretRef"] = {"name": "api-key", "key": "key"}
    if (resources := draw(st.sampled_from(RESOURCES))) is not None:
        serving["resources"] = resources
    if draw(st.booleans()):
        serving["image"] = "registry.example.com/vllm/vllm-openai:v0.33.0"

    spec = {
        "model": model,
        "workload": {"promptTokens": prompt, "outputTokens": output},
        "slo": slo,
        "advisor": advisor,
        "sharing": sharing,
        "gpu": {
            "product": product,
            "count": draw(st.integers(1, 8)),
            "nodeSelector": draw(st.sampled_from(NODE_SELECTORS)),
            "tolerations": draw(
                st.lists(st.sampled_from(TOLERATIONS), max_size=2, unique_by=lambda t: t.get("key"))
            ),
        },
        "profiling": {
            "backend": draw(st.sampled_from(["vllm", "simulated"])),
            "sweep": draw(st.sampled_from(["adaptive", "exhaustive"])),
            "timeoutSeconds": draw(st.integers(60, 86_400)),
            "backoffLimit": draw(st.integers(0, 10)),
            "reuseCachedProfile": draw(st.booleans()),
        },
        "serving": serving,
    }
    name = draw(st.from_regex(NAME, fullmatch=True).filter(lambda n: len(n) <= 63))
    return name, spec


def dry_run(kube: KubeClient, obj: dict[str, Any]) -> None:
    try:
        kube.apply(obj, dry_run=True)
    except KubeError as err:
        raise AssertionError(
            f"the API server rejects the {obj['kind']} {obj['metadata']['name']}: {err}"
        ) from err


@FUZZ
@given(drawn=specs(), device_plugin_replicas=st.sampled_from([2, 4, 8]))
def test_any_valid_spec_renders_objects_the_api_server_accepts(
    drawn, device_plugin_replicas, kube, namespace
):
    name, spec = drawn
    note(f"name={name} spec={spec}")
    LLMDeploymentSpec.model_validate(spec)  # the draws are valid specs by construction
    dry_run(
        kube,
        {
            "apiVersion": "llmpack.io/v1alpha1",
            "kind": "LLMDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        },
    )
    cluster = cluster_offering_everything(
        spec["gpu"]["product"], device_plugin_replicas, labels=spec["gpu"].get("nodeSelector")
    )
    if context_refusal(LLMDeploymentSpec.model_validate(spec)) is not None:
        # a context or workload beyond what the model allows: refused before any profiling Job
        run = reconcile_through(spec, cluster=cluster, name=name, namespace=namespace, play=False)
        reason = {c["type"]: c for c in run.status["conditions"]}["Degraded"]["reason"]
        assert run.status["phase"] == "Failed" and reason == "ContextTooLong", run.status
        assert not run.kube.applied, "nothing is applied for a spec vLLM would refuse"
        TALLY["answered ContextTooLong"] = TALLY.get("answered ContextTooLong", 0) + 1
        return
    parsed = LLMDeploymentSpec.model_validate(spec)
    if check_weights(parsed, lookup_gpu(parsed.gpu.product)) is not None:
        # weights larger than one GPU (a large catalogue model on a small GPU): refused before any Job
        run = reconcile_through(spec, cluster=cluster, name=name, namespace=namespace, play=False)
        reason = {c["type"]: c for c in run.status["conditions"]}["Degraded"]["reason"]
        assert run.status["phase"] == "Failed" and reason == "WeightsDoNotFit", run.status
        assert not run.kube.applied, "nothing is applied for weights no GPU of the product holds"
        TALLY["answered WeightsDoNotFit"] = TALLY.get("answered WeightsDoNotFit", 0) + 1
        return
    try:
        simulated_profile(LLMDeploymentSpec.model_validate(spec))
    except BackendError as err:
        # What the profiling Job would report (ProfilingFailed); still, its objects must apply.
        assert "does not fit" in str(err)
        TALLY["profiler: does not fit"] = TALLY.get("profiler: does not fit", 0) + 1
        run = reconcile_through(spec, cluster=cluster, name=name, namespace=namespace, play=False)
    else:
        run = reconcile_through(spec, cluster=cluster, name=name, namespace=namespace)
    status = run.status
    note(f"status={status}")
    if status["phase"] == "Failed":
        reason = {c["type"]: c for c in status["conditions"]}["Degraded"]["reason"]
        assert reason in ANSWERS, status
        assert status["message"]
        TALLY[f"answered {reason}"] = TALLY.get(f"answered {reason}", 0) + 1
    elif status["phase"] != "Profiling":  # Profiling: the model does not fit, the Job would say so
        assert status["phase"] in ("Deploying", "Ready"), status
        mode = status["recommendation"]["mode"]
        TALLY[f"rendered {mode}"] = TALLY.get(f"rendered {mode}", 0) + 1
    assert run.kube.applied, "at least the profiling objects"
    for obj in run.kube.applied:
        # The profile-cache ConfigMap goes to the operator's namespace, which need not exist here.
        dry_run(kube, {**obj, "metadata": {**obj["metadata"], "namespace": namespace}})


def test_a_character_beyond_the_bmp_survives_server_side_apply(kube, namespace):
    spec = {
        "model": {"name": "facebook/opt-1.3b"},
        "sharing": {"mode": "exclusive"},
        "serving": {"env": [{"name": "GREETING", "value": "hello \N{ROCKET}"}]},
    }
    run = reconcile_through(
        spec, cluster=cluster_offering_everything("NVIDIA-H100-80GB-HBM3", 2), namespace=namespace
    )
    (deployment,) = [o for o in run.kube.applied if o["kind"] == "Deployment"]
    dry_run(kube, deployment)


def test_the_network_policy_and_api_key_render_objects_the_api_server_accepts(kube, namespace):
    """With the chart's networkPolicy on (peers of every kind) and an API key Secret, each mode's
    objects, the NetworkPolicy among them, pass a server-side dry-run apply."""
    import json

    from llmpack.controller.reconciler import OperatorConfig

    peers = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}},
        {"podSelector": {"matchLabels": {"app": "prometheus"}}, "namespaceSelector": {}},
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
    ]
    settings = OperatorConfig(network_policy_from=json.dumps(peers))
    for sharing in ({"mode": "mps", "mpsProvider": "dra"}, {"mode": "exclusive"}, {"mode": "mig"}):
        spec = {
            "model": {"name": "facebook/opt-1.3b"},
            "sharing": sharing,
            "serving": {"apiKeySecretRef": {"name": "api-key"}},
        }
        run = reconcile_through(spec, settings=settings, name="policy", namespace=namespace)
        kinds = {o["kind"] for o in run.kube.applied}
        assert {"NetworkPolicy", "Deployment", "Service"} <= kinds, (sharing, run.status)
        for obj in run.kube.applied:
            dry_run(kube, {**obj, "metadata": {**obj["metadata"], "namespace": namespace}})
