"""Cross-field rules of the LLMDeployment API, each stated once: the CEL expression the API server
evaluates (x-kubernetes-validations in the generated CRD), the same rule in Python for objects
read before the CRD had it and for `llmpack` commands that take a spec from a file, and the one
message both give. The two expressions cannot be derived from each other; keeping them side by
side in one row is what keeps them one rule (tests/integration/test_crd_validation.py has the API
server judge every row's violating example, tests/unit check the Python side on the same ones).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Rule(Generic[T]):
    cel: str  # evaluated by the API server on the object's JSON (camelCase, `has` for optionals)
    holds: Callable[[T], bool]  # the same rule on the parsed model
    message: str  # what to change, as the user reads it from kubectl or the CLI
    # Python only: what in the value breaks it, e.g. the offending variable's name (CEL messages
    # are static, so the API server's says less)
    culprit: Callable[[T], str] | None = None


def cel_validations(rules: tuple[Rule[Any], ...]) -> dict[str, Any]:
    """json_schema_extra for a model whose rules these are."""
    return {"x-kubernetes-validations": [{"rule": r.cel, "message": r.message} for r in rules]}


def first_broken(rules: tuple[Rule[T], ...], value: T) -> str | None:
    """The message of the first rule `value` breaks (with its culprit), or None."""
    for rule in rules:
        if not rule.holds(value):
            return f"{rule.message} (found {rule.culprit(value)})" if rule.culprit else rule.message
    return None
