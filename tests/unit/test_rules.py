"""The cross-field rules (llmpack/api/rules.py): every rule has a spec that breaks it, pydantic
refuses that spec with the rule's message, and the CRD carries the rule's CEL with the same
message (tests/integration/test_crd_rules.py has the API server refuse the same specs)."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from llmpack.api import crd as crdgen
from llmpack.api.llmdeployment import LLMDeploymentSpec
from rule_examples import ALL_RULES, BREAKING_SPECS

RULES = ALL_RULES


def test_every_rule_has_a_breaking_example():
    assert sorted(BREAKING_SPECS) == sorted(r.message for r in RULES)


@pytest.mark.parametrize("message", sorted(BREAKING_SPECS))
def test_pydantic_refuses_with_the_rules_message(message):
    with pytest.raises(ValidationError) as err:
        LLMDeploymentSpec.model_validate(BREAKING_SPECS[message])
    assert message in str(err.value)


def _validations(node):
    if isinstance(node, dict):
        yield from node.get("x-kubernetes-validations", [])
        for value in node.values():
            yield from _validations(value)
    elif isinstance(node, list):
        for item in node:
            yield from _validations(item)


def test_the_crd_carries_each_rule_once():
    """The spec's rules, and the one on the object's name (no spec holds a name to test in Python)."""
    carried = [(v["rule"], v["message"]) for v in _validations(yaml.safe_load(crdgen.render_yaml()))]
    name_rule = (crdgen.NAME_RULE["rule"], crdgen.NAME_RULE["message"])
    assert sorted(carried) == sorted([*((r.cel, r.message) for r in RULES), name_rule])


def test_the_reserved_env_message_names_the_variable():
    spec = {"model": {"name": "m"}, "serving": {"env": [{"name": "CUDA_VISIBLE_DEVICES", "value": "0"}]}}
    with pytest.raises(ValidationError, match=r"found CUDA_VISIBLE_DEVICES"):
        LLMDeploymentSpec.model_validate(spec)
