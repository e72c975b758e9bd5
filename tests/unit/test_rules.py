"""The cross-field rules (llmpack/api/rules.py): every rule has a spec that breaks it, pydantic
refuses that spec with the rule's message, and the CRD carries the rule's CEL with the same
message (tests/integration/test_crd_rules.py has the API server refuse the same specs)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmpack.api import crd as crdgen
from llmpack.api.llmdeployment import SERVING_RULES, SHARING_RULES, SPEC_RULES, LLMDeploymentSpec
from rule_examples import BREAKING_SPECS

RULES = (*SHARING_RULES, *SERVING_RULES, *SPEC_RULES)


def test_every_rule_has_a_breaking_example():
    assert sorted(BREAKING_SPECS) == sorted(r.message for r in RULES)


@pytest.mark.parametrize("message", sorted(BREAKING_SPECS))
def test_pydantic_refuses_with_the_rules_message(message):
    with pytest.raises(ValidationError) as err:
        LLMDeploymentSpec.model_validate(BREAKING_SPECS[message])
    assert message in str(err.value)


def test_the_crd_carries_each_rule_once():
    text = crdgen.render_yaml()
    for rule in RULES:
        assert text.count(rule.message.split(":")[0]) == 1, rule.message


def test_the_reserved_env_message_names_the_variable():
    spec = {"model": {"name": "m"}, "serving": {"env": [{"name": "CUDA_VISIBLE_DEVICES", "value": "0"}]}}
    with pytest.raises(ValidationError, match=r"found CUDA_VISIBLE_DEVICES"):
        LLMDeploymentSpec.model_validate(spec)
