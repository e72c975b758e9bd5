"""The API server judges the CRD's CEL rules as pydantic does: each spec of tests/rule_examples.py
is refused by a server-side dry run with the rule's message (llmpack/api/rules.py), and the same
spec with the rule respected is accepted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import kube
from rule_examples import BREAKING_SPECS

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def crd_applied(kubectl):
    kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "llmpack.io_llmdeployments.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/llmdeployments.llmpack.io", "--timeout=30s")
    kube.wait_for(
        lambda: kubectl("get", "llmd", "-A", check=False).returncode == 0, timeout=30, what="llmd discovery"
    )


def dry_run(kubectl, namespace: str, spec: dict, name: str = "r"):
    body = {
        "apiVersion": "llmpack.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }
    return kubectl(
        "create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(body), check=False
    )


@pytest.mark.parametrize("message", sorted(BREAKING_SPECS))
def test_the_api_server_refuses_with_the_same_message(crd_applied, kubectl, namespace, message):
    result = dry_run(kubectl, namespace, BREAKING_SPECS[message])
    assert result.returncode != 0
    assert message in " ".join(result.stderr.split()), result.stderr


def test_a_spec_within_the_rules_is_accepted(crd_applied, kubectl, namespace):
    result = dry_run(kubectl, namespace, {"model": {"name": "facebook/opt-1.3b", "maxModelLen": 1024}})
    assert result.returncode == 0, result.stderr


def test_a_name_longer_than_a_label_value_is_refused_on_create(crd_applied, kubectl, namespace):
    """The name labels and selects the LLMDeployment's pods (63 characters at most); a longer one
    would have to be shortened into a name another LLMDeployment could hold."""
    spec = {"model": {"name": "facebook/opt-1.3b"}}
    longest = dry_run(kubectl, namespace, spec, name="a" * 63)
    assert longest.returncode == 0, longest.stderr
    result = dry_run(kubectl, namespace, spec, name="a" * 64)
    assert result.returncode != 0
    assert "an LLMDeployment's name is at most 63 characters" in result.stderr, result.stderr
