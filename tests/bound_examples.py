"""Values the LLMDeployment schema admits no more: one spec per bound the operator relies on (a
maximum on every number, a pattern or a length on every string, the shape of every object),
each with the field the refusal must name. tests/unit/test_api_bounds.py hands each to pydantic,
tests/integration/test_crd_bounds.py to the API server (a server-side dry run); both must refuse
it naming that field. Cross-field rules have their own table (rule_examples.py).

Infinity and NaN never reach the API server: JSON has no spelling for them (kubectl and the
server's YAML decoder refuse `.inf` and `.nan` before any schema), and a number beyond a float64
(1e999) is refused by the decoder. The largest finite float, 1e308, is what these cases send."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

HUGE = 10**6
FLOAT_MAX = 1e308
_MODEL = {"name": "facebook/opt-1.3b"}
_ARCH = {"numLayers": 24, "numKvHeads": 32, "headDim": 64, "parameterBytes": 2_631_720_960}


@dataclass(frozen=True)
class Bound:
    id: str
    spec: dict[str, Any]
    field: str  # as the API server names it: spec.advisor.latencyFactor, spec.gpu.tolerations[0].key

    @property
    def loc(self) -> str:
        """The same field as pydantic's error location (dots, list indices as numbers)."""
        return self.field.removeprefix("spec.").replace("[", ".").replace("]", "")


def _with(**sections: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": copy.deepcopy(_MODEL)}
    for key, value in sections.items():
        spec[key] = {**spec.get(key, {}), **value}
    return spec


def _arch(**changes: Any) -> dict[str, Any]:
    return {"model": {"name": "acme/custom-1b", "architecture": {**_ARCH, **changes}}}


def _env(**var: Any) -> dict[str, Any]:
    return _with(serving={"env": [{"name": "A", **var}]})


def _behavior(rules: Any) -> dict[str, Any]:
    return _with(autoscaling={"maxGPUs": 4, "behavior": {"scaleUp": rules}})


def _resources(resources: Any) -> dict[str, Any]:
    return _with(serving={"resources": resources})


BOUNDS: list[Bound] = [
    # model
    Bound("revision-empty", _with(model={"revision": ""}), "spec.model.revision"),
    Bound("revision-too-long", _with(model={"revision": "r" * 256}), "spec.model.revision"),
    Bound("max-model-len-huge", _with(model={"maxModelLen": 10**9}), "spec.model.maxModelLen"),
    Bound("layers-huge", _arch(numLayers=HUGE), "spec.model.architecture.numLayers"),
    Bound("kv-heads-huge", _arch(numKvHeads=HUGE), "spec.model.architecture.numKvHeads"),
    Bound("head-dim-huge", _arch(headDim=HUGE), "spec.model.architecture.headDim"),
    Bound("parameter-bytes-huge", _arch(parameterBytes=10**15), "spec.model.architecture.parameterBytes"),
    Bound(
        "max-position-embeddings-huge",
        _arch(maxPositionEmbeddings=10**9),
        "spec.model.architecture.maxPositionEmbeddings",
    ),
    Bound(
        "secret-name-not-dns",
        _with(model={"hfTokenSecretRef": {"name": "HF_Token"}}),
        "spec.model.hfTokenSecretRef.name",
    ),
    Bound(
        "secret-key-slash",
        _with(model={"hfTokenSecretRef": {"name": "hf", "key": "../token"}}),
        "spec.model.hfTokenSecretRef.key",
    ),
    # workload
    Bound("output-tokens-huge", _with(workload={"outputTokens": 10**9}), "spec.workload.outputTokens"),
    # slo
    Bound("itl-mean-float-max", _with(slo={"itlMeanMs": FLOAT_MAX}), "spec.slo.itlMeanMs"),
    Bound("itl-p99-float-max", _with(slo={"itlP99Ms": FLOAT_MAX}), "spec.slo.itlP99Ms"),
    Bound("ttft-p99-float-max", _with(slo={"ttftP99Ms": FLOAT_MAX}), "spec.slo.ttftP99Ms"),
    # advisor
    Bound(
        "latency-factor-float-max", _with(advisor={"latencyFactor": FLOAT_MAX}), "spec.advisor.latencyFactor"
    ),
    Bound(
        "candidate-batch-huge",
        _with(advisor={"candidateBatchSizes": [8, HUGE]}),
        "spec.advisor.candidateBatchSizes[1]",
    ),
    Bound(
        "min-replica-gain-float-max",
        _with(advisor={"minReplicaGain": FLOAT_MAX}),
        "spec.advisor.minReplicaGain",
    ),
    Bound("max-num-seqs-huge", _with(advisor={"maxNumSeqs": HUGE}), "spec.advisor.maxNumSeqs"),
    Bound("replicas-per-gpu-huge", _with(advisor={"replicasPerGPU": HUGE}), "spec.advisor.replicasPerGPU"),
    # sharing
    Bound(
        "max-replicas-per-gpu-huge",
        _with(sharing={"maxReplicasPerGPU": HUGE}),
        "spec.sharing.maxReplicasPerGPU",
    ),
    Bound(
        "mig-profile-huge-memory",
        _with(sharing={"mode": "mig", "migProfile": "1g." + "9" * 20 + "gb"}),
        "spec.sharing.migProfile",
    ),
    # gpu
    Bound("gpu-product-too-long", _with(gpu={"product": "N" * 64}), "spec.gpu.product"),
    Bound("gpu-product-space", _with(gpu={"product": "NVIDIA H100"}), "spec.gpu.product"),
    Bound("gpu-count-huge", _with(gpu={"count": HUGE}), "spec.gpu.count"),
    Bound(
        "node-selector-value-space",
        _with(gpu={"nodeSelector": {"pool": "a b"}}),
        "spec.gpu.nodeSelector.pool",
    ),
    Bound(
        "node-selector-too-many",
        _with(gpu={"nodeSelector": {f"k{i}": "v" for i in range(65)}}),
        "spec.gpu.nodeSelector",
    ),
    Bound(
        "toleration-key-space",
        _with(gpu={"tolerations": [{"key": "a b", "operator": "Exists"}]}),
        "spec.gpu.tolerations[0].key",
    ),
    Bound(
        "toleration-value-too-long",
        _with(gpu={"tolerations": [{"key": "k", "value": "v" * 64}]}),
        "spec.gpu.tolerations[0].value",
    ),
    Bound(
        "toleration-seconds-huge",
        _with(gpu={"tolerations": [{"key": "k", "effect": "NoExecute", "tolerationSeconds": 10**12}]}),
        "spec.gpu.tolerations[0].tolerationSeconds",
    ),
    Bound(
        "toleration-seconds-negative",
        _with(gpu={"tolerations": [{"key": "k", "effect": "NoExecute", "tolerationSeconds": -1}]}),
        "spec.gpu.tolerations[0].tolerationSeconds",
    ),
    Bound(
        "tolerations-too-many",
        _with(gpu={"tolerations": [{"key": f"k{i}", "operator": "Exists"} for i in range(65)]}),
        "spec.gpu.tolerations",
    ),
    # autoscaling
    Bound("min-gpus-huge", _with(autoscaling={"minGPUs": HUGE, "maxGPUs": HUGE}), "spec.autoscaling.minGPUs"),
    Bound("max-gpus-huge", _with(autoscaling={"maxGPUs": HUGE}), "spec.autoscaling.maxGPUs"),
    Bound(
        "target-utilization-float-max",
        _with(autoscaling={"maxGPUs": 4, "targetUtilization": FLOAT_MAX}),
        "spec.autoscaling.targetUtilization",
    ),
    Bound("behavior-scale-up-a-word", _behavior("fast"), "spec.autoscaling.behavior.scaleUp"),
    Bound(
        "behavior-window-huge",
        _behavior({"stabilizationWindowSeconds": HUGE}),
        "spec.autoscaling.behavior.scaleUp.stabilizationWindowSeconds",
    ),
    Bound(
        "behavior-select-policy-unknown",
        _behavior({"selectPolicy": "Any"}),
        "spec.autoscaling.behavior.scaleUp.selectPolicy",
    ),
    Bound(
        "behavior-policy-period-huge",
        _behavior({"policies": [{"type": "Pods", "value": 1, "periodSeconds": HUGE}]}),
        "spec.autoscaling.behavior.scaleUp.policies[0].periodSeconds",
    ),
    Bound(
        "behavior-policy-value-zero",
        _behavior({"policies": [{"type": "Percent", "value": 0, "periodSeconds": 60}]}),
        "spec.autoscaling.behavior.scaleUp.policies[0].value",
    ),
    Bound(
        "behavior-tolerance-not-a-quantity",
        _behavior({"tolerance": "ten percent"}),
        "spec.autoscaling.behavior.scaleUp.tolerance",
    ),
    # profiling
    Bound(
        "profiling-image-space",
        _with(profiling={"image": "repo/img:v1 --privileged"}),
        "spec.profiling.image",
    ),
    Bound("profiling-image-too-long", _with(profiling={"image": "i" * 1025}), "spec.profiling.image"),
    Bound("backoff-limit-huge", _with(profiling={"backoffLimit": HUGE}), "spec.profiling.backoffLimit"),
    Bound("timeout-huge", _with(profiling={"timeoutSeconds": 10**12}), "spec.profiling.timeoutSeconds"),
    # serving
    Bound("serving-image-space", _with(serving={"image": "a b"}), "spec.serving.image"),
    Bound("serving-port-huge", _with(serving={"port": HUGE}), "spec.serving.port"),
    Bound(
        "extra-args-too-many",
        _with(serving={"extraArgs": ["--enforce-eager"] * 129}),
        "spec.serving.extraArgs",
    ),
    Bound("extra-arg-too-long", _with(serving={"extraArgs": ["x" * 1025]}), "spec.serving.extraArgs[0]"),
    Bound("extra-arg-empty", _with(serving={"extraArgs": [""]}), "spec.serving.extraArgs[0]"),
    Bound(
        "env-too-many", _with(serving={"env": [{"name": f"V{i}"} for i in range(129)]}), "spec.serving.env"
    ),
    Bound("env-name-with-equals", _with(serving={"env": [{"name": "A=B"}]}), "spec.serving.env[0].name"),
    Bound("env-value-too-long", _env(value="v" * 32_769), "spec.serving.env[0].value"),
    Bound(
        "env-secret-name-not-dns",
        _env(valueFrom={"secretKeyRef": {"name": "Not A Name", "key": "k"}}),
        "spec.serving.env[0].valueFrom.secretKeyRef.name",
    ),
    Bound(
        "env-resource-divisor-not-a-quantity",
        _env(valueFrom={"resourceFieldRef": {"resource": "limits.memory", "divisor": "1 Mi"}}),
        "spec.serving.env[0].valueFrom.resourceFieldRef.divisor",
    ),
    Bound("resources-a-list", _resources(["cpu"]), "spec.serving.resources"),
    Bound("resources-requests-a-word", _resources({"requests": "1Gi"}), "spec.serving.resources.requests"),
    Bound(
        "resources-cpu-not-a-quantity",
        _resources({"requests": {"cpu": "lots"}}),
        "spec.serving.resources.requests.cpu",
    ),
    Bound(
        "resources-memory-negative",
        _resources({"limits": {"memory": -1}}),
        "spec.serving.resources.limits.memory",
    ),
    Bound(
        "resources-memory-a-list",
        _resources({"limits": {"memory": ["1Gi"]}}),
        "spec.serving.resources.limits.memory",
    ),
    Bound(
        "resources-memory-fraction-of-a-byte-number",
        _resources({"limits": {"memory": 1.5}}),
        "spec.serving.resources.limits.memory",
    ),
]

# Fields the schema does not know, refused by name (kubectl's field validation is Strict by
# default; pydantic forbids extra fields): GPUs in resources are the operator's.
UNKNOWN: list[Bound] = [
    Bound("resources-cpu-at-top", _resources({"cpu": "1"}), "spec.serving.resources.cpu"),
    Bound(
        "resources-gpu",
        _resources({"limits": {"nvidia.com/gpu": 8}}),
        "spec.serving.resources.limits.nvidia.com/gpu",
    ),
    Bound("resources-claims", _resources({"claims": [{"name": "gpu"}]}), "spec.serving.resources.claims"),
    Bound("env-unknown-field", _env(value="1", bogus=True), "spec.serving.env[0].bogus"),
    Bound(
        "env-value-from-unknown-source",
        _env(valueFrom={"fileKeyRef": {"path": "/etc/passwd"}}),
        "spec.serving.env[0].valueFrom.fileKeyRef",
    ),
    Bound(
        "behavior-unknown-field",
        _behavior({"stabilisationWindowSeconds": 60}),
        "spec.autoscaling.behavior.scaleUp.stabilisationWindowSeconds",
    ),
]
