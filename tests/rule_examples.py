"""One spec that breaks each cross-field rule of llmpack/api/rules.py, keyed by the rule's message: the
tests hand each to the API server (CEL) and to pydantic and expect the same message from both, and
a rule added without an example fails them."""

from __future__ import annotations

from typing import Any

from llmpack.api.llmdeployment import SERVING_RULES, SHARING_RULES, SPEC_RULES

_MODEL = {"name": "facebook/opt-1.3b"}

BREAKING_SPECS: dict[str, dict[str, Any]] = {
    SHARING_RULES[0].message: {"model": _MODEL, "sharing": {"mode": "mps", "migProfile": "1g.10gb"}},
    SERVING_RULES[0].message: {
        "model": _MODEL,
        "serving": {"env": [{"name": "CUDA_MPS_PIPE_DIRECTORY", "value": "/tmp"}]},
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
}
