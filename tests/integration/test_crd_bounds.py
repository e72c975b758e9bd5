"""The API server refuses every value of tests/bound_examples.py naming its field (a server-side
dry run with kubectl's default, strict field validation), as pydantic does
(tests/unit/test_api_bounds.py); and it cannot hold an infinity or a NaN at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import kube
from bound_examples import BOUNDS, UNKNOWN, Bound

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def crd_applied(kubectl):
    kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        str(ROOT / "crds" / "llmpack.io_llmdeployments.yaml"),
    )
    kubectl("wait", "--for=condition=Established", "crd/llmdeployments.llmpack.io", "--timeout=30s")
    kube.wait_for(
        lambda: kubectl("get", "llmd", "-A", check=False).returncode == 0, timeout=30, what="llmd discovery"
    )


def dry_run(kubectl, namespace: str, spec: dict | str):
    body = {"apiVersion": "llmpack.io/v1alpha1", "kind": "LLMDeployment", "metadata": {"name": "b"}}
    text = json.dumps({**body, "spec": spec}) if isinstance(spec, dict) else json.dumps(body)[:-1] + spec
    return kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-", input=text, check=False)


@pytest.mark.parametrize("case", BOUNDS + UNKNOWN, ids=lambda c: c.id)
def test_the_api_server_refuses_naming_the_field(crd_applied, kubectl, namespace, case: Bound):
    result = dry_run(kubectl, namespace, case.spec)
    assert result.returncode != 0, f"accepted: {result.stdout}"
    assert case.field in result.stderr, result.stderr


@pytest.mark.parametrize("number", ["Infinity", "NaN", "1e999"])
def test_numbers_beyond_a_float64_never_reach_the_schema(crd_applied, kubectl, namespace, number):
    result = dry_run(
        kubectl, namespace, ', "spec": {"model": {"name": "m"}, "slo": {"itlMeanMs": ' + number + "}}}"
    )
    assert result.returncode != 0, result.stdout


def test_the_bounds_themselves_are_accepted(crd_applied, kubectl, namespace):
    spec = {
        "model": {
            "name": "acme/custom",
            "maxModelLen": 1 << 24,
            "architecture": {
                "numLayers": 1024,
                "numKvHeads": 1024,
                "headDim": 4096,
                "parameterBytes": 1 << 44,
            },
        },
        "advisor": {"latencyFactor": 1000, "candidateBatchSizes": [4096]},
        "serving": {"resources": {"requests": {"cpu": "500m", "memory": 10**9}, "limits": {"memory": "2Gi"}}},
        "autoscaling": {"maxGPUs": 4096, "behavior": {"scaleDown": {"tolerance": "0.05"}}},
    }
    result = dry_run(kubectl, namespace, spec)
    assert result.returncode == 0, result.stderr
