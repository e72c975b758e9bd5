"""One spec that breaks each cross-field rule of llmpack/api/rules.py, keyed by the rule's message: the
tests hand each to the API server (CEL) and to pydantic and expect the same message from both, and
a rule added without an example fails them."""

from __future__ import annotations

from typing import Any

from llmpack.api.llmdeployment import (
    ARCHITECTURE_RULES,
    ENV_RULES,
    ENV_SOURCE_RULES,
    GPU_RULES,
    MODEL_CACHE_RULES,
    MODEL_RULES,
    SERVING_RULES,
    SHARING_RULES,
    SPEC_RULES,
    TOLERATION_RULES,
)

_MODEL = {"name": "facebook/opt-1.3b"}
ALL_RULES = (
    *MODEL_RULES,
    *MODEL_CACHE_RULES,
    *ARCHITECTURE_RULES,
    *SHARING_RULES,
    *TOLERATION_RULES,
    *GPU_RULES,
    *ENV_SOURCE_RULES,
    *ENV_RULES,
    *SERVING_RULES,
    *SPEC_RULES,
)

_ARCH = {"numLayers": 26, "numKvHeads": 1, "headDim": 256, "parameterBytes": 2_000_000_000}


def _with_arch(**fields: int) -> dict[str, Any]:
    return {"model": {"name": "example/hybrid", "architecture": {**_ARCH, **fields}}}


BREAKING_SPECS: dict[str, dict[str, Any]] = {
    ARCHITECTURE_RULES[0].message: _with_arch(slidingWindow=512),
    ARCHITECTURE_RULES[1].message: _with_arch(chunkedAttentionLayers=3),
    ARCHITECTURE_RULES[2].message: _with_arch(stateLayers=3),
    ARCHITECTURE_RULES[3].message: _with_arch(
        slidingWindow=512, slidingWindowLayers=20, stateLayers=10, stateBytesPerLayer=1
    ),
    ARCHITECTURE_RULES[4].message: _with_arch(stateLayers=26, stateBytesPerLayer=1),
    MODEL_RULES[0].message: {"model": {"name": "--help"}},
    MODEL_RULES[1].message: {"model": {**_MODEL, "revision": "--trust-remote-code"}},
    MODEL_CACHE_RULES[0].message: {"model": {**_MODEL, "cache": {"size": "10Gi", "claimName": "models"}}},
    MODEL_CACHE_RULES[1].message: {
        "model": {**_MODEL, "cache": {"claimName": "models", "accessMode": "ReadWriteOnce"}}
    },
    SHARING_RULES[0].message: {"model": _MODEL, "sharing": {"mode": "mps", "migProfile": "1g.10gb"}},
    TOLERATION_RULES[0].message: {
        "model": _MODEL,
        "gpu": {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]},
    },
    TOLERATION_RULES[1].message: {"model": _MODEL, "gpu": {"tolerations": [{"effect": "NoSchedule"}]}},
    TOLERATION_RULES[2].message: {
        "model": _MODEL,
        "gpu": {"tolerations": [{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 60}]},
    },
    GPU_RULES[0].message: {"model": _MODEL, "gpu": {"nodeSelector": {"bad key!": "x"}}},
    ENV_SOURCE_RULES[0].message: {
        "model": _MODEL,
        "serving": {
            "env": [
                {
                    "name": "A",
                    "valueFrom": {
                        "secretKeyRef": {"name": "s", "key": "k"},
                        "fieldRef": {"fieldPath": "metadata.name"},
                    },
                }
            ]
        },
    },
    ENV_RULES[0].message: {
        "model": _MODEL,
        "serving": {
            "env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
        },
    },
    SERVING_RULES[0].message: {
        "model": _MODEL,
        "serving": {"env": [{"name": "CUDA_MPS_PIPE_DIRECTORY", "value": "/tmp"}]},
    },
    SERVING_RULES[1].message: {"model": _MODEL, "serving": {"extraArgs": ["--max-num-seqs", "64"]}},
    SERVING_RULES[2].message: {
        "model": _MODEL,
        "serving": {"resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}},
    },
    SERVING_RULES[3].message: {"model": _MODEL, "serving": {"extraArgs": ["--api_key=sk-secret"]}},
    SERVING_RULES[4].message: {
        "model": _MODEL,
        "serving": {"env": [{"name": "VLLM_API_KEY", "value": "sk-secret"}]},
    },
    SPEC_RULES[0].message: {
        "model": _MODEL,
        "sharing": {"mode": "exclusive"},
        "advisor": {"replicasPerGPU": 2},
    },
    SPEC_RULES[1].message: {
        "model": _MODEL,
        "sharing": {"maxReplicasPerGPU": 2},
        "advisor": {"replicasPerGPU": 3},
    },
    SPEC_RULES[2].message: {"model": _MODEL, "autoscaling": {"minGPUs": 4, "maxGPUs": 2}},
    SPEC_RULES[3].message: {"model": {**_MODEL, "maxModelLen": 300}},  # the default workload is 512
    SPEC_RULES[4].message: {
        "model": _MODEL,
        "sharing": {"maxReplicasPerGPU": 12},
        "serving": {"inferencePool": {"endpointPickerRef": {"name": "epp"}}},
    },
}
