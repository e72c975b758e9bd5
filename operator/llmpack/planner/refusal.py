"""A refusal: the planner's answer where a spec cannot go further. A value, returned, never raised:
the operator's pass turns it into a status, `llmpack plan` into a message and exit status 1."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Refused:
    """The spec cannot go further as it is: `condition` is the step that stopped, `reason` one
    CamelCase word, the message what to change. `retryable`: the cluster may change (nodes come),
    so the operator looks again later; otherwise only a spec change helps. `waiting`: nothing is
    wrong yet, something the spec names is still to come (a GPUPool applied with its members):
    the phase is Pending, not Failed."""

    condition: str
    reason: str
    message: str
    retryable: bool = False
    waiting: bool = False
