"""Every bound of tests/bound_examples.py is pydantic's too: the operator, `llmpack plan` and
`llmpack advise` refuse what the API server refuses, naming the same field
(tests/integration/test_crd_bounds.py has the API server's side)."""

from __future__ import annotations

import math

import pytest
import yaml
from pydantic import ValidationError

from bound_examples import BOUNDS, UNKNOWN, Bound
from llmpack.api.llmdeployment import LLMDeploymentSpec


def refused_at(spec: dict) -> list[str]:
    with pytest.raises(ValidationError) as err:
        LLMDeploymentSpec.model_validate(spec)
    return [".".join(str(part) for part in e["loc"]) for e in err.value.errors()]


@pytest.mark.parametrize("case", BOUNDS + UNKNOWN, ids=lambda c: c.id)
def test_pydantic_refuses_naming_the_field(case: Bound):
    locations = refused_at(case.spec)
    assert any(loc == case.loc or loc.startswith(case.loc + ".") for loc in locations), locations


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
@pytest.mark.parametrize("field", ["slo: {itlMeanMs: %s}", "advisor: {latencyFactor: %s}"])
def test_infinity_and_nan_read_from_yaml_are_refused(field, value):
    """`llmpack plan -f` reads YAML, which has spellings for them that JSON (and so the API
    server) does not."""
    spec = yaml.safe_load("model: {name: m}\n" + field % value)
    number = next(iter(next(v for k, v in spec.items() if k != "model").values()))
    assert math.isinf(number) or math.isnan(number)
    with pytest.raises(ValidationError, match="finite number"):
        LLMDeploymentSpec.model_validate(spec)


def test_the_largest_values_the_bounds_allow_are_accepted():
    spec = LLMDeploymentSpec.model_validate(
        {
            "model": {
                "name": "acme/custom",
                "revision": "r" * 255,
                "maxModelLen": 1 << 24,
                "architecture": {
                    "numLayers": 1024,
                    "numKvHeads": 1024,
                    "headDim": 4096,
                    "parameterBytes": 1 << 44,
                    "maxPositionEmbeddings": 1 << 24,
                },
            },
            "slo": {"itlMeanMs": 60_000, "ttftP99Ms": 3_600_000},
            "advisor": {"latencyFactor": 1000, "candidateBatchSizes": [4096]},
            "gpu": {"tolerations": [{"key": "k", "effect": "NoExecute", "tolerationSeconds": 31_536_000}]},
            "serving": {
                "resources": {
                    "requests": {"cpu": "500m", "memory": "1e9", "ephemeral-storage": 10},
                    "limits": {"cpu": 2, "memory": "2Gi"},
                },
                "env": [{"name": "HF_HOME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            },
            "autoscaling": {
                "maxGPUs": 4096,
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 3600, "tolerance": "0.05"}},
            },
        }
    )
    assert spec.serving.resources == {
        "requests": {"cpu": "500m", "memory": "1e9", "ephemeral-storage": 10},
        "limits": {"cpu": 2, "memory": "2Gi"},
    }
