"""Kubernetes resource quantities (`500m`, `2Gi`, `1e3`, 4) as the API server reads them: the same
pattern in the CRD's schema (int-or-string, as Kubernetes' own CRDs spell a quantity) and in
pydantic, and their value for comparisons (requests must not exceed limits)."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema

# Kubernetes' quantity pattern (apimachinery resource.Quantity) without the sign: a negative
# request or limit is never valid in a pod.
QUANTITY_PATTERN = (
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
QUANTITY_MAX_LENGTH = 64
_QUANTITY = re.compile(QUANTITY_PATTERN)
_SUFFIX = re.compile(r"([KMGTPE]i|[numkMGTPE])$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": "1e-9", "u": "1e-6", "m": "1e-3", "k": "1e3", "M": "1e6", "G": "1e9", "T": "1e12"}
_DECIMAL |= {"P": "1e15", "E": "1e18"}


def _check(value: int | str) -> int | str:
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if len(value) > QUANTITY_MAX_LENGTH or not _QUANTITY.match(value):
        raise ValueError(
            f"{value!r} is not a Kubernetes quantity: a number with an optional suffix, e.g. 500m, 4, 16Gi"
        )
    return value


def quantity_value(value: int | str) -> Decimal:
    """The number a quantity stands for (2Gi -> 2147483648, 500m -> 0.5)."""
    if isinstance(value, int):
        return Decimal(value)
    text = value.lstrip("+")
    suffix = _SUFFIX.search(text)
    if suffix is None:
        return Decimal(text)  # plain or exponent form (Decimal reads 1e3)
    number = Decimal(text[: suffix.start()])
    unit = suffix.group(1)
    return number * (Decimal(_BINARY[unit]) if unit in _BINARY else Decimal(_DECIMAL[unit]))


Quantity = Annotated[
    int | str,
    AfterValidator(_check),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "maxLength": QUANTITY_MAX_LENGTH,
            "minimum": 0,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
