"""Bad input the operator answers without a cluster: the same spec corpus the API server sees in
tests/e2e/test_badinput.py, fed through the reconciler's own validation (a spec stored before a
CRD rule existed, or by a cluster that skipped validation, must still end in Failed with a message
naming the field), tampered and absurd profiles, and specs the advisor or the planner refuses.

Each case asserts what a user reads: the phase, the condition reason, and a message that names the
field or says what to change. The corpus tables here are shared with the end-to-end run.

Cases that once showed bugs (now fixed, kept as regressions): the UnknownModel message naming a
field the CRD accepts, serving.extraArgs setting --max-model-len, planning refusals naming the
constraint that failed, and a service port without room for the replica ports.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmpack.api.llmdeployment import LLMDeploymentSpec
from llmpack.api.profile import Profile
from llmpack.controller.cache import DATA_KEY, ProfileCache, cache_configmap_name
from llmpack.controller.reconciler import OperatorConfig, Reconciler
from llmpack.hardware import lookup_gpu
from llmpack.hardware.cluster import (
    GPU_PRODUCT_LABEL,
    GPU_REPLICAS_LABEL,
    SHARING_STRATEGY_LABEL,
    ClusterFacts,
    NodeFacts,
)
from llmpack.planner.planning import profile_key, profiling_max_model_len
from llmpack.profiler.facts import ProfileRequest, override_for
from llmpack.profiler.simulated import SimulatedBackend
from llmpack.runtime.fake import FakeClient

pytestmark = pytest.mark.badinput

ROOT = Path(__file__).resolve().parents[2]
H100 = "NVIDIA-H100-80GB-HBM3"
BASE_SPEC: dict[str, Any] = {"model": {"name": "facebook/opt-1.3b"}}


# -- the spec corpus (shared with tests/e2e/test_badinput.py) -------------------------------------


@dataclass(frozen=True)
class Case:
    """A spec the API server must refuse at `kubectl apply`.

    field: what the API server's message names (a field path, or for a CEL rule its message,
    which names the fields). hints: what else the message must say (the bound, the allowed
    values). operator: whether the operator's own validation refuses it too (False where pydantic
    is deliberately lenient and the CRD is the only guard, e.g. duplicates in a set are dropped)."""

    id: str
    spec: dict[str, Any]
    field: str
    hints: tuple[str, ...] = ()
    operator: bool = True


def merged(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`patch` deep-merged over `base`; a None value removes the key."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def case_spec(case: Case) -> dict[str, Any]:
    return merged(BASE_SPEC, case.spec)


ARCH = {"numLayers": 24, "numKvHeads": 32, "headDim": 64, "parameterBytes": 2_631_720_960}
GE1 = ("greater than or equal to 1",)
INT = ("must be of type integer",)
ENUM = ("supported values",)


def arch(**changes: Any) -> dict[str, Any]:
    return {"model": {"name": "acme/custom-1b", "architecture": {**ARCH, **changes}}}


SCHEMA_CASES: list[Case] = [
    # model
    Case("model-missing", {"model": None}, "spec.model", ("Required value",)),
    Case("model-name-empty", {"model": {"name": ""}}, "spec.model.name", ("at least 1 chars",)),
    Case("model-name-too-long", {"model": {"name": "m" * 254}}, "spec.model.name", ("Too long", "253")),
    Case("model-dtype-int8", {"model": {"dtype": "int8"}}, "spec.model.dtype", ENUM),
    Case("model-max-model-len-zero", {"model": {"maxModelLen": 0}}, "spec.model.maxModelLen", GE1),
    Case("model-max-model-len-string", {"model": {"maxModelLen": "long"}}, "spec.model.maxModelLen", INT),
    Case("architecture-layers-zero", arch(numLayers=0), "spec.model.architecture.numLayers", GE1),
    Case(
        "architecture-parameter-bytes-negative",
        arch(parameterBytes=-1),
        "spec.model.architecture.parameterBytes",
        GE1,
    ),
    Case(
        "architecture-head-dim-missing",
        {"model": {"name": "acme/x", "architecture": {k: v for k, v in ARCH.items() if k != "headDim"}}},
        "spec.model.architecture.headDim",
        ("Required value",),
    ),
    Case(
        "secret-ref-name-missing",
        {"model": {"hfTokenSecretRef": {"key": "token"}}},
        "spec.model.hfTokenSecretRef.name",
        ("Required value",),
    ),
    Case(
        "secret-ref-key-empty",
        {"model": {"hfTokenSecretRef": {"name": "hf", "key": ""}}},
        "spec.model.hfTokenSecretRef.key",
        ("at least 1 chars",),
    ),
    # workload
    Case("prompt-tokens-zero", {"workload": {"promptTokens": 0}}, "spec.workload.promptTokens", GE1),
    Case("output-tokens-negative", {"workload": {"outputTokens": -5}}, "spec.workload.outputTokens", GE1),
    Case(
        "prompt-tokens-absurd",
        {"workload": {"promptTokens": 2_000_000}},
        "spec.workload.promptTokens",
        ("less than or equal to 1048576",),
    ),
    Case("output-tokens-string", {"workload": {"outputTokens": "many"}}, "spec.workload.outputTokens", INT),
    # slo
    Case("slo-itl-mean-zero", {"slo": {"itlMeanMs": 0}}, "spec.slo.itlMeanMs", ("greater than 0",)),
    Case("slo-itl-p99-negative", {"slo": {"itlP99Ms": -1}}, "spec.slo.itlP99Ms", ("greater than 0",)),
    Case("slo-ttft-zero", {"slo": {"ttftP99Ms": 0}}, "spec.slo.ttftP99Ms", ("greater than 0",)),
    Case("slo-itl-string", {"slo": {"itlMeanMs": "fast"}}, "spec.slo.itlMeanMs", ("must be of type number",)),
    # advisor
    Case("policy-unknown", {"advisor": {"policy": "greedy"}}, "spec.advisor.policy", ENUM),
    Case("epsilon-zero", {"advisor": {"epsilon": 0}}, "spec.advisor.epsilon", ("greater than 0",)),
    Case("epsilon-above-one", {"advisor": {"epsilon": 1.5}}, "spec.advisor.epsilon", ("less than 1",)),
    Case(
        "latency-factor-one",
        {"advisor": {"latencyFactor": 1}},
        "spec.advisor.latencyFactor",
        ("greater than 1",),
    ),
    Case(
        "candidates-empty",
        {"advisor": {"candidateBatchSizes": []}},
        "spec.advisor.candidateBatchSizes",
        ("at least 1 items",),
    ),
    Case(
        "candidates-zero",
        {"advisor": {"candidateBatchSizes": [0, 8]}},
        "spec.advisor.candidateBatchSizes[0]",
        GE1,
    ),
    Case(
        "candidates-duplicate",
        {"advisor": {"candidateBatchSizes": [8, 8]}},
        "spec.advisor.candidateBatchSizes[1]",
        ("Duplicate value",),
        operator=False,  # pydantic sorts and de-duplicates the set
    ),
    Case(
        "candidates-too-many",
        {"advisor": {"candidateBatchSizes": list(range(1, 66))}},
        "spec.advisor.candidateBatchSizes",
        ("Too many", "64"),
    ),
    Case(
        "max-num-seqs-absurd",
        {"advisor": {"maxNumSeqs": 5000}},
        "spec.advisor.maxNumSeqs",
        ("less than or equal to 4096",),
    ),
    Case("max-num-seqs-zero", {"advisor": {"maxNumSeqs": 0}}, "spec.advisor.maxNumSeqs", GE1),
    Case("replicas-per-gpu-zero", {"advisor": {"replicasPerGPU": 0}}, "spec.advisor.replicasPerGPU", GE1),
    Case(
        "replicas-per-gpu-above-mps-limit",
        {"advisor": {"replicasPerGPU": 49}, "sharing": {"maxReplicasPerGPU": 48}},
        "spec.advisor.replicasPerGPU",
        ("less than or equal to 48",),
    ),
    Case(
        "min-replica-gain-negative",
        {"advisor": {"minReplicaGain": -0.1}},
        "spec.advisor.minReplicaGain",
        ("greater than or equal to 0",),
    ),
    Case(
        "min-replica-gain-absurd",
        {"advisor": {"minReplicaGain": 10}},
        "spec.advisor.minReplicaGain",
        ("less than 10",),
    ),
    # sharing
    Case("sharing-mode-shared", {"sharing": {"mode": "shared"}}, "spec.sharing.mode", ENUM),
    Case("sharing-mode-upper-case", {"sharing": {"mode": "MPS"}}, "spec.sharing.mode", ENUM),
    Case("mps-provider-host-ipc", {"sharing": {"mpsProvider": "hostIPC"}}, "spec.sharing.mpsProvider", ENUM),
    Case(
        "max-replicas-per-gpu-zero",
        {"sharing": {"maxReplicasPerGPU": 0}},
        "spec.sharing.maxReplicasPerGPU",
        GE1,
    ),
    Case(
        "max-replicas-per-gpu-above-mps-limit",
        {"sharing": {"maxReplicasPerGPU": 100}},
        "spec.sharing.maxReplicasPerGPU",
        ("less than or equal to 48",),
    ),
    Case(
        "mig-profile-no-dot",
        {"sharing": {"mode": "mig", "migProfile": "1g10gb"}},
        "spec.sharing.migProfile",
        ("should match",),
    ),
    Case(
        "mig-profile-8g",
        {"sharing": {"mode": "mig", "migProfile": "8g.80gb"}},
        "spec.sharing.migProfile",
        ("should match",),
    ),
    Case(
        "mig-profile-upper-case",
        {"sharing": {"mode": "mig", "migProfile": "1G.10GB"}},
        "spec.sharing.migProfile",
        ("should match",),
    ),
    # gpu
    Case("gpu-product-empty", {"gpu": {"product": ""}}, "spec.gpu.product", ("at least 1 chars",)),
    Case("gpu-count-zero", {"gpu": {"count": 0}}, "spec.gpu.count", GE1),
    Case("gpu-count-negative", {"gpu": {"count": -1}}, "spec.gpu.count", GE1),
    Case("gpu-count-word", {"gpu": {"count": "two"}}, "spec.gpu.count", INT),
    Case("gpu-count-fraction", {"gpu": {"count": 1.5}}, "spec.gpu.count", INT),
    Case("gpu-count-absurd", {"gpu": {"count": 5000}}, "spec.gpu.count", ("less than or equal to 4096",)),
    Case(
        "node-selector-number",
        {"gpu": {"nodeSelector": {"pool": 1}}},
        "spec.gpu.nodeSelector.pool",
        ("must be of type string",),
    ),
    Case(
        "toleration-operator-maybe",
        {"gpu": {"tolerations": [{"key": "k", "operator": "Maybe"}]}},
        "spec.gpu.tolerations[0].operator",
        ENUM,
    ),
    Case(
        "toleration-effect-unknown",
        {"gpu": {"tolerations": [{"key": "k", "effect": "NoRun"}]}},
        "spec.gpu.tolerations[0].effect",
        ENUM,
    ),
    Case("tolerations-not-a-list", {"gpu": {"tolerations": "all"}}, "spec.gpu.tolerations", ("type array",)),
    # profiling
    Case("profiling-backend-paper", {"profiling": {"backend": "paper"}}, "spec.profiling.backend", ENUM),
    Case("profiling-sweep-random", {"profiling": {"sweep": "random"}}, "spec.profiling.sweep", ENUM),
    Case(
        "profiling-timeout-zero", {"profiling": {"timeoutSeconds": 0}}, "spec.profiling.timeoutSeconds", GE1
    ),
    Case(
        "profiling-timeout-absurd",
        {"profiling": {"timeoutSeconds": 100_000}},
        "spec.profiling.timeoutSeconds",
        ("less than or equal to 86400",),
    ),
    Case(
        "profiling-backoff-absurd",
        {"profiling": {"backoffLimit": 11}},
        "spec.profiling.backoffLimit",
        ("less than or equal to 10",),
    ),
    Case(
        "profiling-backoff-negative",
        {"profiling": {"backoffLimit": -1}},
        "spec.profiling.backoffLimit",
        ("greater than or equal to 0",),
    ),
    Case(
        "profiling-reuse-yes",
        {"profiling": {"reuseCachedProfile": "yes"}},
        "spec.profiling.reuseCachedProfile",
        ("must be of type boolean",),
        operator=False,  # pydantic's lax mode reads "yes" as true
    ),
    # serving
    Case(
        "serving-port-privileged",
        {"serving": {"port": 80}},
        "spec.serving.port",
        ("greater than or equal to 1024",),
    ),
    Case(
        "serving-port-out-of-range",
        {"serving": {"port": 70000}},
        "spec.serving.port",
        ("less than or equal to 65000",),
    ),
    Case("serving-port-name", {"serving": {"port": "http"}}, "spec.serving.port", INT),
    Case("extra-args-string", {"serving": {"extraArgs": "--foo"}}, "spec.serving.extraArgs", ("type array",)),
    Case(
        "env-name-missing",
        {"serving": {"env": [{"value": "x"}]}},
        "spec.serving.env[0].name",
        ("Required value",),
    ),
    Case("env-not-a-list", {"serving": {"env": "A=1"}}, "spec.serving.env", ("type array",)),
]

# serving.extraArgs setting a flag the operator owns, in the spellings vLLM reads.
OWNED_FLAGS = [
    ["--max-num-seqs", "64"],
    ["--max-num-seqs=8"],
    ["--max_num_seqs", "8"],
    ["--kv-cache-memory-bytes=1"],
    ["--kv-cache-mem", "1"],
    ["--gpu-memory-utilization", "0.9"],
    ["--device-memory-utilization", "0.9"],
    ["--port", "9000"],
    ["--uds", "/tmp/s"],
]

# Rules that span fields (the CRD's x-kubernetes-validations, mirrored by the pydantic model). The
# API server reports them on `spec` with the rule's message, which names the fields to change.
CEL_CASES: list[Case] = [
    Case(
        "exclusive-with-two-replicas-per-gpu",
        {"sharing": {"mode": "exclusive"}, "advisor": {"replicasPerGPU": 2}},
        "sharing.mode exclusive runs one replica per GPU: remove advisor.replicasPerGPU",
    ),
    Case(
        "replicas-per-gpu-above-max",
        {"sharing": {"mode": "mps", "maxReplicasPerGPU": 4}, "advisor": {"replicasPerGPU": 10}},
        "advisor.replicasPerGPU must not exceed sharing.maxReplicasPerGPU",
    ),
    Case(
        "replicas-per-gpu-above-default-max",
        {"advisor": {"replicasPerGPU": 9}},
        "advisor.replicasPerGPU must not exceed sharing.maxReplicasPerGPU",
    ),
    Case(
        "max-model-len-below-workload",
        {"model": {"maxModelLen": 256}, "workload": {"promptTokens": 200, "outputTokens": 200}},
        "model.maxModelLen must hold workload.promptTokens + workload.outputTokens",
    ),
    Case(
        "max-model-len-below-default-workload",
        {"model": {"maxModelLen": 300}},
        "model.maxModelLen must hold workload.promptTokens + workload.outputTokens",
    ),
    Case(
        "mig-profile-with-mps",
        {"sharing": {"mode": "mps", "migProfile": "1g.10gb"}},
        "migProfile applies only to mode mig (or auto); remove it or set mode: mig",
    ),
    Case(
        "mig-profile-with-exclusive",
        {"sharing": {"mode": "exclusive", "migProfile": "3g.40gb"}},
        "migProfile applies only to mode mig (or auto); remove it or set mode: mig",
    ),
    *(
        Case(
            "extra-args-" + "-".join(a).lstrip("-").replace("=", "-").replace(".", "").replace("/", ""),
            {"serving": {"extraArgs": a}},
            "serving.extraArgs must not set a flag the operator owns",
        )
        for a in OWNED_FLAGS
    ),
    Case(
        "model-name-a-flag",
        {"model": {"name": "--trust-remote-code"}},
        "model.name must not start with '-'",
    ),
    Case(
        "model-revision-a-flag",
        {"model": {"revision": "-x"}},
        "model.revision must not start with '-'",
    ),
]

# Unknown fields. The CRD is structural: `kubectl apply` (field validation Strict by default since
# kubectl 1.27) refuses them naming the field; with --validate=warn they are pruned with a warning.
UNKNOWN_FIELD_CASES: list[Case] = [
    Case("unknown-top-level-field", {"replicas": 3}, 'unknown field "spec.replicas"'),
    Case(
        "unknown-nested-field", {"model": {"quantization": "awq"}}, 'unknown field "spec.model.quantization"'
    ),
    Case("typo-in-field-name", {"gpu": {"prodcut": "NVIDIA-L4"}}, 'unknown field "spec.gpu.prodcut"'),
    Case(
        "env-unknown-field",
        {"serving": {"env": [{"name": "A", "value": "1", "bogus": True}]}},
        'unknown field "spec.serving.env[0].bogus"',
    ),
    Case(
        "resources-gpu",
        {"serving": {"resources": {"limits": {"nvidia.com/gpu": 8}}}},
        'unknown field "spec.serving.resources.limits.nvidia.com/gpu"',
    ),
    Case(
        "snake-case-field",
        {"sharing": {"max_replicas_per_gpu": 2}},
        'unknown field "spec.sharing.max_replicas_per_gpu"',
        operator=False,  # pydantic's populate_by_name reads the Python name too
    ),
]


def operator_field(case: Case) -> str:
    """The API server's field path as the operator's own validation names it."""
    return re.sub(r"\[(\d+)\]", r".\1", case.field.removeprefix("spec."))


# -- the reconciler's API: the runtime's in-memory double -----------------------------------------

FakeKube = FakeClient


def body(spec: dict[str, Any], name: str = "bad", namespace: str = "team-a") -> dict[str, Any]:
    return {
        "apiVersion": "llmpack.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "generation": 1},
        "spec": spec,
    }


def cluster_offering_everything(
    product: str = H100, device_plugin_replicas: int = 2, labels: dict[str, str] | None = None
) -> ClusterFacts:
    """Whole GPUs, every MIG profile of the product, device-plugin MPS and DRA, on one node each;
    `labels` on every node (what a spec's gpu.nodeSelector asks for)."""
    gpu = lookup_gpu(product)
    nodes = [
        NodeFacts("whole", {GPU_PRODUCT_LABEL: product}, {"nvidia.com/gpu": "8"}),
        NodeFacts("mig", {GPU_PRODUCT_LABEL: product}, {p.resource_name: "7" for p in gpu.mig_profiles}),
        NodeFacts(
            "mps",
            {
                GPU_PRODUCT_LABEL: product + "-SHARED",
                SHARING_STRATEGY_LABEL: "mps",
                GPU_REPLICAS_LABEL: str(device_plugin_replicas),
            },
            {"nvidia.com/gpu": str(8 * device_plugin_replicas)},
        ),
        NodeFacts("dra", {GPU_PRODUCT_LABEL: product}, {}),
    ]
    nodes = [NodeFacts(n.name, {**n.labels, **(labels or {})}, n.allocatable) for n in nodes]
    return ClusterFacts({n.name: n for n in nodes}, {"gpu.nvidia.com"}, {"dra": 8})


def simulated_profile(spec: LLMDeploymentSpec) -> Profile:
    """What the profiling Job's simulated backend would publish for `spec`."""
    override = override_for(spec.model.architecture)
    request = ProfileRequest(
        model=spec.model.name,
        gpu_product=spec.gpu.product,
        dtype=spec.model.dtype,
        # the context the Job is given; without one, the profiler's own default by the same rule
        max_model_len=profiling_max_model_len(spec) or spec.workload_tokens(),
        prompt_tokens=spec.workload.prompt_tokens,
        output_tokens=spec.workload.output_tokens,
        revision=spec.model.revision,
        architecture=override,
        engine_args=tuple(spec.serving.engine_args()),
    )
    backend = SimulatedBackend(request)
    backend.start()
    return backend.profile([backend.measure(b) for b in spec.advisor.candidate_batch_sizes], [])


def finish_profiling(kube: FakeKube, namespace: str, profile_json: str | None) -> None:
    """Play the profiling Job: publish `profile_json` into its result ConfigMap (with the key the
    Job was given, as the profiler files it, where it is a JSON object), mark it Complete."""
    (job,) = [o for (k, ns, _), o in kube.objects.items() if k == "Job" and ns == namespace]
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    result = kube.objects[("ConfigMap", namespace, args[args.index("--result-configmap") + 1])]
    if profile_json is not None:
        result["data"] = {DATA_KEY: with_key(profile_json, args[args.index("--profile-key") + 1])}
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}


def with_key(profile_json: str, key: str) -> str:
    """The JSON with the key the profiler adds (llmpack profile --profile-key); other text as is."""
    try:
        data = json.loads(profile_json)
    except ValueError:
        return profile_json
    if isinstance(data, dict) and data.get("key") is None:
        data["key"] = key
        return json.dumps(data)
    return profile_json


@dataclass
class Run:
    kube: FakeKube
    reconciler: Reconciler
    results: list[Any]

    @property
    def status(self) -> dict[str, Any]:
        return self.results[-1].status

    @property
    def events(self) -> list[tuple[str, str, str]]:
        return [e for r in self.results for e in r.events]

    def condition(self, type_: str) -> dict[str, Any]:
        return {c["type"]: c for c in self.status["conditions"]}[type_]


def reconcile_through(
    spec: dict[str, Any],
    *,
    cluster: ClusterFacts | None = None,
    kube: FakeKube | None = None,
    profile_json: str | None = "simulated",
    name: str = "bad",
    namespace: str = "team-a",
    play: bool = True,
    settings: OperatorConfig | None = None,
) -> Run:
    """Reconcile `spec` as the operator does; when it starts profiling (and `play`), play the Job
    (publish `profile_json`, by default what the simulated backend measures) and reconcile again."""
    kube = kube or FakeKube()
    config = settings or OperatorConfig()
    reconciler = Reconciler(kube, config, cluster or cluster_offering_everything(), kube.store)
    obj = body(spec, name, namespace)
    results = [reconciler.reconcile(obj)]
    if play and results[-1].status.get("phase") == "Profiling":
        if profile_json == "simulated":
            profile_json = simulated_profile(LLMDeploymentSpec.model_validate(spec)).model_dump_json()
        finish_profiling(kube, namespace, profile_json)
        results.append(reconciler.reconcile({**obj, "status": results[-1].status}))
    return Run(kube, reconciler, results)


def assert_failed(run: Run, reason: str, *needles: str) -> str:
    status = run.status
    assert status["phase"] == "Failed", status
    message = status["message"]
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    degraded = run.condition("Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == reason, degraded
    assert degraded["message"] == message
    return message


# -- the spec corpus through the operator's own validation --------------------------------------


@pytest.mark.parametrize("case", [c for c in SCHEMA_CASES + CEL_CASES if c.operator], ids=lambda c: c.id)
def test_a_spec_the_crd_refuses_is_refused_by_the_operator_too_naming_the_field(case):
    run = reconcile_through(case_spec(case), kube=FakeKube())
    assert_failed(run, "InvalidSpec", "invalid spec: ", operator_field(case))
    assert run.condition("Progressing")["status"] == "False"
    assert run.kube.calls == [], "a spec that does not validate is never acted on"


@pytest.mark.parametrize(
    "case", [c for c in SCHEMA_CASES + UNKNOWN_FIELD_CASES if not c.operator], ids=lambda c: c.id
)
def test_where_the_operator_is_lenient_the_crd_is_the_guard(case):
    LLMDeploymentSpec.model_validate(case_spec(case))  # accepted (the API server refuses it first)


@pytest.mark.parametrize("case", [c for c in UNKNOWN_FIELD_CASES if c.operator], ids=lambda c: c.id)
def test_an_unknown_field_is_refused_by_the_operator_too(case):
    run = reconcile_through(case_spec(case))
    message = assert_failed(run, "InvalidSpec", "Extra inputs are not permitted")
    path = re.sub(r"\[(\d+)\]", r".\1", case.field.split('"')[1].removeprefix("spec."))
    assert path in message


def test_the_corpus_is_big_enough():
    assert len(SCHEMA_CASES) + len(CEL_CASES) + len(UNKNOWN_FIELD_CASES) >= 50
    ids = [c.id for c in SCHEMA_CASES + CEL_CASES + UNKNOWN_FIELD_CASES]
    assert len(ids) == len(set(ids))


# -- specs the CRD accepts and the operator refuses ---------------------------------------------


@pytest.mark.parametrize("extra", OWNED_FLAGS, ids=lambda a: a[0])
def test_extra_args_may_not_set_a_flag_the_operator_owns(extra):
    flag = extra[0].split("=")[0]
    run = reconcile_through(merged(BASE_SPEC, {"serving": {"extraArgs": ["--enforce-eager", *extra]}}))
    assert_failed(
        run, "InvalidSpec", "serving.extraArgs must not set a flag the operator owns", f"found {flag}"
    )


def test_extra_args_may_not_set_max_model_len():
    run = reconcile_through(merged(BASE_SPEC, {"serving": {"extraArgs": ["--max-model-len", "8192"]}}))
    assert_failed(run, "InvalidSpec", "serving.extraArgs", "--max-model-len")


def test_an_unknown_gpu_product_names_the_known_ones():
    run = reconcile_through(merged(BASE_SPEC, {"gpu": {"product": "NVIDIA-RTX-9090"}}))
    assert_failed(run, "UnknownGPU", "gpu.product", "NVIDIA-RTX-9090", H100, "nvidia.com/gpu.product")
    assert run.kube.calls == []


def test_an_unknown_model_without_architecture_says_to_set_it():
    spec = {"model": {"name": "acme/secret-sauce-7b"}, "profiling": {"backend": "simulated"}}
    run = reconcile_through(spec)
    assert_failed(run, "UnknownModel", "acme/secret-sauce-7b", "spec.model.architecture", "backend vllm")
    assert run.kube.calls == []


def test_an_unknown_model_is_profiled_by_the_engine_which_reads_its_config():
    run = reconcile_through({"model": {"name": "acme/secret-sauce-7b"}}, play=False)
    assert run.status["phase"] == "Profiling", run.status


def _crd_properties(*path: str) -> set[str]:
    crd = yaml.safe_load((ROOT / "crds" / "llmpack.io_llmdeployments.yaml").read_text())
    node = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for part in path:
        node = node["properties"][part]
    return set(node["properties"])


def test_the_unknown_model_message_names_fields_the_api_accepts():
    spec = {"model": {"name": "acme/secret-sauce-7b"}, "profiling": {"backend": "simulated"}}
    message = reconcile_through(spec).status["message"]
    named = set(re.findall(r"\(([^)]*)\)", message)[0].replace(" ", "").split(","))
    assert named <= _crd_properties("spec", "model", "architecture"), named


# -- specs the advisor and the planner refuse ---------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "needles"),
    [
        ({"slo": {"itlMeanMs": 0.01}}, ("0.01 ms", "lowest mean ITL measured", "relax the SLO")),
        ({"slo": {"itlP99Ms": 0.01}}, ("p99 ITL SLO (0.01 ms)", "relax the SLO")),
        (
            {"sharing": {"mode": "mps", "maxReplicasPerGPU": 48}, "advisor": {"replicasPerGPU": 48}},
            ("replicasPerGPU=48 does not fit", "lower replicasPerGPU to"),
        ),
        ({"advisor": {"maxNumSeqs": 4096}}, ("one replica needs", "GiB", "batch size")),
    ],
    ids=["slo-mean", "slo-p99", "replicas-per-gpu", "max-num-seqs"],
)
def test_the_advisor_refuses_what_cannot_be_met_and_says_what_to_relax(spec, needles):
    run = reconcile_through(merged(BASE_SPEC, spec))
    assert_failed(run, "AdvisorRefused", *needles)
    assert run.condition("Advised")["status"] == "False"
    assert not [k for (k, _, _) in run.kube.objects if k == "Deployment"], "nothing is deployed"


def test_a_product_the_cluster_lacks_is_reported_with_what_it_offers():
    run = reconcile_through(
        merged(BASE_SPEC, {"gpu": {"product": "NVIDIA-A100-SXM4-80GB"}}),
        cluster=cluster_offering_everything(H100),
    )
    assert_failed(
        run,
        "NoMatchingNodes",
        "NVIDIA-A100-SXM4-80GB",
        "offers nothing",
        "Change sharing.mode or gpu.product",
    )
    assert run.results[-1].retry_after, "what the cluster offers may change: it is retried"


@pytest.mark.parametrize(
    ("spec", "cluster", "needle"),
    [
        (
            {
                "model": {"name": "acme/big", "architecture": {**ARCH, "parameterBytes": 50 * 10**9}},
                "sharing": {"mode": "mig"},
            },
            ClusterFacts(
                {
                    "mig": NodeFacts("mig", {GPU_PRODUCT_LABEL: H100}, {"nvidia.com/mig-3g.40gb": "2"}),
                    "whole": NodeFacts("whole", {GPU_PRODUCT_LABEL: H100}, {"nvidia.com/gpu": "1"}),
                }
            ),
            "GiB",
        ),
        (
            {"sharing": {"mode": "mig", "migProfile": "7g.80gb"}},
            ClusterFacts(
                {"mig": NodeFacts("mig", {GPU_PRODUCT_LABEL: H100}, {"nvidia.com/mig-1g.10gb": "7"})}
            ),
            "migProfile",
        ),
        (
            {"sharing": {"mode": "mps", "mpsProvider": "devicePlugin"}},
            cluster_offering_everything(H100, device_plugin_replicas=8),
            "GiB",
        ),
    ],
    ids=["no-slice-holds-a-replica", "forced-profile-not-offered", "device-plugin-slice-too-small"],
)
def test_a_planning_refusal_names_the_constraint_that_failed(spec, cluster, needle):
    message = assert_failed(reconcile_through(merged(BASE_SPEC, spec), cluster=cluster), "NoMatchingNodes")
    assert needle in message, message


def test_profiling_where_the_product_comes_only_as_mig_slices_is_refused_saying_what_to_set():
    """A profiling Job needs a whole GPU (or the slice sharing.migProfile names): on a cluster
    that cuts every GPU of the product into slices its pod would wait until the deadline."""
    mig_only = ClusterFacts(
        {"mig": NodeFacts("mig", {GPU_PRODUCT_LABEL: H100}, {"nvidia.com/mig-3g.40gb": "2"})}
    )
    run = reconcile_through(merged(BASE_SPEC, {"sharing": {"mode": "mig"}}), cluster=mig_only)
    assert_failed(run, "NoMatchingNodes", "profiling needs a whole", "only as mig", "sharing.migProfile")
    assert not [k for (k, _, _) in run.kube.objects if k == "Job"]
    forced = reconcile_through(
        merged(BASE_SPEC, {"sharing": {"mode": "mig", "migProfile": "3g.40gb"}}), cluster=mig_only
    )
    assert forced.status["phase"] in ("Deploying", "Ready"), forced.status


def test_profiling_where_the_product_comes_only_as_mps_shares_is_refused_without_mig_advice():
    shares = cluster_offering_everything(H100)
    mps_only = ClusterFacts({"mps": shares.nodes["mps"]})
    run = reconcile_through(merged(BASE_SPEC, {"sharing": {"mode": "mps"}}), cluster=mps_only)
    message = assert_failed(run, "NoMatchingNodes", "profiling needs a whole", "only as mps/devicePlugin")
    assert "migProfile" not in message.split("Change")[0], "no MIG slices to profile on here"


def test_profiling_where_only_dra_offers_the_product_takes_the_gpu_through_a_claim():
    dra_only = ClusterFacts(
        {"dra": NodeFacts("dra", {GPU_PRODUCT_LABEL: H100}, {})},
        device_classes={"gpu.nvidia.com"},
        dra_devices={"dra": 8},
    )
    run = reconcile_through(
        merged(BASE_SPEC, {"sharing": {"mode": "mps", "mpsProvider": "dra"}}), cluster=dra_only, play=False
    )
    assert run.status["phase"] == "Profiling", run.status
    (job,) = [o for (k, _, _), o in run.kube.objects.items() if k == "Job"]
    pod = job["spec"]["template"]["spec"]
    (claim,) = pod["resourceClaims"]
    template = run.kube.objects[("ResourceClaimTemplate", "team-a", claim["resourceClaimTemplateName"])]
    request = template["spec"]["spec"]["devices"]["requests"][0]["exactly"]
    assert request == {"deviceClassName": "gpu.nvidia.com", "allocationMode": "ExactCount", "count": 1}
    assert "config" not in template["spec"]["spec"]["devices"], "no MPS: the GPU is the profiler's alone"
    resources = pod["containers"][0]["resources"]
    assert resources["claims"] == [{"name": claim["name"]}]
    assert "nvidia.com/gpu" not in resources.get("limits", {})

    served = reconcile_through(
        merged(BASE_SPEC, {"sharing": {"mode": "mps", "mpsProvider": "dra"}}), cluster=dra_only
    )
    assert served.status["phase"] in ("Deploying", "Ready"), served.status
    templates = [n for (k, _, n) in served.kube.objects if k == "ResourceClaimTemplate"]
    assert templates and all("profile" not in n for n in templates), "the profiling claim goes with its Job"


def test_gpu_node_selector_limits_what_the_cluster_is_taken_to_offer():
    """Only nodes whose labels match gpu.nodeSelector count, as for the scheduler: pinned to a
    DRA-only pool, profiling claims its GPU through DRA although whole GPUs exist elsewhere."""
    pools = ClusterFacts(
        {
            "whole": NodeFacts("whole", {GPU_PRODUCT_LABEL: H100, "pool": "a"}, {"nvidia.com/gpu": "8"}),
            "dra": NodeFacts("dra", {GPU_PRODUCT_LABEL: H100, "pool": "b"}, {}),
        },
        device_classes={"gpu.nvidia.com"},
        dra_devices={"dra": 8},
    )
    assert pools.offers(H100, {"pool": "b"}).modes == ["mps/dra"]
    assert pools.offers(H100, {"pool": "a"}).modes == ["exclusive"]
    run = reconcile_through(
        merged(BASE_SPEC, {"gpu": {"nodeSelector": {"pool": "b"}}}), cluster=pools, play=False
    )
    (job,) = [o for (k, _, _), o in run.kube.objects.items() if k == "Job"]
    assert job["spec"]["template"]["spec"]["resourceClaims"]
    nowhere = reconcile_through(merged(BASE_SPEC, {"gpu": {"nodeSelector": {"pool": "c"}}}), cluster=pools)
    assert_failed(nowhere, "NoMatchingNodes", "gpu.nodeSelector pool=c")


def test_a_service_port_without_room_for_the_replica_ports_is_a_failed_condition():
    spec = merged(BASE_SPEC, {"sharing": {"mode": "mps", "mpsProvider": "dra"}, "serving": {"port": 65535}})
    try:
        run = reconcile_through(spec)
    except ValueError as err:
        raise AssertionError(f"reconcile raised instead of answering: {err}") from err
    assert_failed(run, "InvalidSpec", "serving.port")


# -- profiles: tampered cache entries and absurd profiler output --------------------------------


def good_profile() -> dict[str, Any]:
    return json.loads(simulated_profile(LLMDeploymentSpec.model_validate(BASE_SPEC)).model_dump_json())


def _set(path: str, value: Any):
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is _DELETE:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return mutate


_DELETE = object()


@dataclass(frozen=True)
class Raw:
    make: Callable[[], str]


# (id, how the JSON is spoilt, what the message must name)
PROFILE_CASES: list[tuple[str, Any, str]] = [
    ("garbage", "{not json", "Invalid JSON"),
    ("truncated", Raw(lambda: json.dumps(good_profile())[:200]), "EOF while parsing"),
    ("not-an-object", "[1, 2, 3]", "Input should be an object"),
    ("nan-throughput", _set("points.0.total_tokens_per_s", math.nan), "points.0.total_tokens_per_s"),
    ("infinite-itl", _set("points.1.itl_mean_ms", math.inf), "points.1.itl_mean_ms"),
    ("negative-throughput", _set("points.0.total_tokens_per_s", -5.0), "points.0.total_tokens_per_s"),
    ("absurd-throughput", _set("points.2.total_tokens_per_s", 1e12), "points.2.total_tokens_per_s"),
    ("absurd-itl", _set("points.0.itl_p99_ms", 1e12), "points.0.itl_p99_ms"),
    ("percent-gpu-utilization", _set("points.0.gpu_utilization", 87), "divide it by 100"),
    ("percent-kv-usage", _set("points.3.kv_cache_usage_peak", 45.0), "points.3.kv_cache_usage_peak"),
    ("no-points", _set("points", []), "points"),
    ("points-missing", _set("points", _DELETE), "points"),
    ("batch-zero", _set("points.0.max_num_seqs", 0), "points.0.max_num_seqs"),
    ("negative-weights", _set("model.weight_bytes", -1), "model.weight_bytes"),
    ("zero-gpu-memory", _set("gpu.memory_bytes", 0), "gpu.memory_bytes"),
    ("future-schema", _set("schema_version", 99), "schema_version"),
    ("kv-capacity-below-a-block", _set("kv_capacity_tokens", 1), "smaller than one KV block"),
    ("negative-preemptions", _set("points.0.preemptions", -3), "points.0.preemptions"),
    ("string-throughput", _set("points.0.total_tokens_per_s", "fast"), "points.0.total_tokens_per_s"),
]


def spoilt(how: str | Raw | Callable[[dict[str, Any]], None]) -> str:
    """The text of a spoilt profile: as given, made by `Raw`, or a good profile mutated."""
    if isinstance(how, str):
        return how
    if isinstance(how, Raw):
        return how.make()
    data = good_profile()
    how(data)
    return json.dumps(data)  # NaN and Infinity as JavaScript literals, as a careless writer would


def test_duplicate_batch_sizes_are_refused():
    data = good_profile()
    data["points"][1]["max_num_seqs"] = data["points"][0]["max_num_seqs"]
    lookup = ProfileCache(_cache_kube(json.dumps(data)), "llmpack-system").lookup("k" * 40)
    assert lookup.profile is None and "repeated max_num_seqs" in lookup.problem


def _cache_kube(raw: str | None) -> FakeKube:
    kube = FakeKube()
    data = {} if raw is None else {DATA_KEY: raw}
    kube.put(
        {
            "kind": "ConfigMap",
            "metadata": {"name": cache_configmap_name("k" * 40), "namespace": "llmpack-system"},
            "data": data,
        }
    )
    return kube


@pytest.mark.parametrize(("case", "how", "needle"), PROFILE_CASES, ids=[c[0] for c in PROFILE_CASES])
def test_a_tampered_cache_entry_is_reported_naming_the_field_and_not_used(case, how, needle):
    lookup = ProfileCache(_cache_kube(spoilt(how)), "llmpack-system").lookup("k" * 40)
    assert lookup.profile is None
    assert lookup.problem.startswith(f"cached profile {cache_configmap_name('k' * 40)} is invalid")
    assert needle in lookup.problem, lookup.problem


def test_a_cache_entry_without_its_data_key_is_reported():
    lookup = ProfileCache(_cache_kube(None), "llmpack-system").lookup("k" * 40)
    assert lookup.profile is None and DATA_KEY in lookup.problem


@pytest.mark.parametrize(("case", "how", "needle"), PROFILE_CASES, ids=[c[0] for c in PROFILE_CASES])
def test_absurd_profiler_output_fails_with_profile_invalid_naming_the_field(case, how, needle):
    run = reconcile_through(BASE_SPEC, profile_json=spoilt(how))
    message = assert_failed(run, "ProfileInvalid", "published an invalid profile", needle)
    assert run.condition("ProfileReady")["status"] == "False"
    assert not [k for (k, ns, _) in run.kube.objects if ns == "llmpack-system"], "nothing is cached"
    assert message


def test_profiler_output_that_is_missing_fails_with_profile_missing():
    run = reconcile_through(BASE_SPEC, profile_json=None)
    assert_failed(run, "ProfileMissing", "completed without publishing a profile")


def test_a_tampered_cache_entry_is_evicted_and_profiled_again():
    """The end-to-end run plays the new Job; here the steps: event, eviction, a new Job."""
    spec = LLMDeploymentSpec.model_validate(BASE_SPEC)
    key = operator_key(spec)
    kube = FakeKube()
    kube.put(
        {
            "kind": "ConfigMap",
            "metadata": {"name": cache_configmap_name(key), "namespace": "llmpack-system"},
            "data": {DATA_KEY: spoilt(_set("points.0.total_tokens_per_s", -1.0))},
        }
    )
    run = reconcile_through(BASE_SPEC, kube=kube)
    warnings = [e for e in run.events if e[1] == "ProfileCacheInvalid"]
    assert warnings and warnings[0][0] == "Warning"
    assert "points.0.total_tokens_per_s" in warnings[0][2] and "profiling again" in warnings[0][2]
    assert ("delete", "ConfigMap", "llmpack-system", cache_configmap_name(key)) in kube.calls
    cached = Profile.model_validate_json(
        kube.objects[("ConfigMap", "llmpack-system", cache_configmap_name(key))]["data"][DATA_KEY]
    )
    assert cached.points[0].total_tokens_per_s > 0, "the re-measured profile replaced the tampered one"
    assert run.status["phase"] in ("Deploying", "Ready"), run.status


# -- profiling leftovers after a crash or a spec change -------------------------------------------


def profiling_jobs(kube: FakeKube, namespace: str = "team-a") -> list[str]:
    return sorted(name for (kind, ns, name) in kube.objects if kind == "Job" and ns == namespace)


def test_a_job_left_by_a_crash_between_caching_and_cleanup_is_deleted_after_restart():
    """The operator caches the profile, then deletes the Job; killed in between, the restarted
    operator finds the profile cached and must still remove the Job and its identity."""
    kube = FakeKube()
    first = Reconciler(kube, OperatorConfig(), cluster_offering_everything(), kube.store)
    obj = body(BASE_SPEC)
    profiling = first.reconcile(obj)
    assert profiling.status["phase"] == "Profiling"
    (job,) = profiling_jobs(kube)
    spec = LLMDeploymentSpec.model_validate(BASE_SPEC)
    first.cache.put(operator_key(spec), simulated_profile(spec))
    # killed here: the Job is still there, the status still says Profiling

    restarted = Reconciler(kube, OperatorConfig(), cluster_offering_everything(), kube.store)
    result = restarted.reconcile({**obj, "status": profiling.status})
    assert result.status["phase"] in ("Deploying", "Ready"), result.status
    assert profiling_jobs(kube) == []
    leftovers = [(k, n) for (k, ns, n) in kube.objects if ns == "team-a" and n.startswith(job)]
    assert leftovers == [], "the Job's ServiceAccount, Role, RoleBinding and result ConfigMap go too"


def test_a_spec_change_mid_profiling_replaces_the_job_of_the_old_spec():
    kube = FakeKube()
    reconciler = Reconciler(kube, OperatorConfig(), cluster_offering_everything(), kube.store)
    first = reconciler.reconcile(body(BASE_SPEC))
    (old_job,) = profiling_jobs(kube)
    changed = merged(BASE_SPEC, {"workload": {"promptTokens": 512}})
    second = reconciler.reconcile({**body(changed), "status": first.status})
    assert second.status["phase"] == "Profiling", second.status
    (new_job,) = profiling_jobs(kube)
    assert new_job != old_job, "the old spec's Job no longer holds a GPU"
    assert second.status["profiling"]["job"] == new_job


def test_a_published_profile_is_taken_only_once_the_job_succeeded():
    """The result ConfigMap lies in the tenant's namespace, where anyone with `edit` can write it
    while the Job runs: what it holds counts only once the Job succeeded."""
    kube = FakeKube()
    reconciler = Reconciler(kube, OperatorConfig(), cluster_offering_everything(), kube.store)
    obj = body(BASE_SPEC)
    first = reconciler.reconcile(obj)
    (job,) = [o for (k, _, _), o in kube.objects.items() if k == "Job"]
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    result = kube.objects[("ConfigMap", "team-a", args[args.index("--result-configmap") + 1])]
    spec = LLMDeploymentSpec.model_validate(BASE_SPEC)
    published = with_key(simulated_profile(spec).model_dump_json(), args[args.index("--profile-key") + 1])
    result["data"] = {DATA_KEY: published, "progress": "done"}
    second = reconciler.reconcile({**obj, "status": first.status})
    assert second.status["phase"] == "Profiling", second.status
    job["status"] = {"succeeded": 1}  # the Job controller counts the pod before its condition
    third = reconciler.reconcile({**obj, "status": second.status})
    assert third.status["phase"] in ("Deploying", "Ready"), third.status
    assert profiling_jobs(kube) == []


def test_a_result_claiming_another_measurement_is_refused_with_what_it_claims():
    """A forged result (another model and GPU, as a tenant with `edit` could write it) is not
    used: the status says what it claims and that something other than the profiler wrote it."""
    forged = simulated_profile(
        LLMDeploymentSpec.model_validate(merged(BASE_SPEC, {"model": {"name": "facebook/opt-2.7b"}}))
    )
    forged = forged.model_copy(update={"gpu": forged.gpu.model_copy(update={"product": "NVIDIA-L4"})})
    run = reconcile_through(BASE_SPEC, profile_json=forged.model_dump_json())
    message = assert_failed(
        run, "ProfileMismatch", "model 'facebook/opt-2.7b'", "GPU 'NVIDIA-L4'", "was not used"
    )
    assert "facebook/opt-1.3b" in message
    assert not [k for (k, ns, _) in run.kube.objects if k == "ConfigMap" and ns == "llmpack-system"], (
        "nothing cached"
    )


def operator_key(spec: LLMDeploymentSpec, namespace: str = "team-a") -> str:
    """The key the operator files `spec`'s profile under (per namespace, the chart's default)."""
    return profile_key(spec, OperatorConfig().profiler_image, "uid-bad", scope=namespace)
