"""Status bookkeeping: standard conditions as Kubernetes API conventions define them, and what a
pod's status says is wrong with it.

Pure: the time a condition changes is the pass's observed time, handed in (`now`).
"""

from __future__ import annotations

from typing import Any, Protocol

from llmpack.api.llmdeployment import (
    CONDITION_TYPES,
    Condition,
    ConditionStatus,
    LLMDeploymentStatus,
)


class HasConditions(Protocol):
    """A status with standard conditions (an LLMDeployment's, a GPUPool's)."""

    conditions: list[Condition]


def set_condition(
    status: HasConditions,
    type_: str,
    value: bool | None,
    reason: str,
    message: str = "",
    *,
    generation: int | None,
    now: str,
) -> None:
    """Set one condition; lastTransitionTime moves (to `now`) only when the status value changes."""
    text: ConditionStatus = "Unknown" if value is None else ("True" if value else "False")
    for index, existing in enumerate(status.conditions):
        if existing.type == type_:
            changed = existing.status != text
            status.conditions[index] = Condition(
                type=type_,
                status=text,
                reason=reason,
                message=message,
                last_transition_time=now if changed else existing.last_transition_time,
                observed_generation=generation,
            )
            return
    status.conditions.append(
        Condition(
            type=type_,
            status=text,
            reason=reason,
            message=message,
            last_transition_time=now,
            observed_generation=generation,
        )
    )
    status.conditions.sort(key=lambda c: CONDITION_TYPES.index(c.type) if c.type in CONDITION_TYPES else 99)


def get_condition(status: LLMDeploymentStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


def comparable(status: dict[str, Any]) -> dict[str, Any]:
    """The status without timestamps, to decide whether a write is needed at all."""
    stripped = dict(status)
    stripped["conditions"] = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions", [])
    ]
    return stripped


# Waiting reasons of a container that is on its way up, not stuck.
_STARTING_REASONS = ("ContainerCreating", "PodInitializing")


def pod_problem(pod: dict[str, Any]) -> str | None:
    """Why a pod does not run, in the scheduler's or the kubelet's words (None if nothing is
    wrong yet): unschedulable, or a container waiting on something other than its own start,
    e.g. CreateContainerConfigError (a missing Secret), ImagePullBackOff or CrashLoopBackOff."""
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"pod {name} is not scheduled: {condition.get('message', '')}"
    for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") and waiting["reason"] not in _STARTING_REASONS:
            detail = f": {waiting['message']}" if waiting.get("message") else ""
            return f"pod {name} container {container['name']}: {waiting['reason']}{detail}"
    return None


def termination_message(pods: list[dict[str, Any]]) -> str:
    """The newest pod's terminated container's message (what the profiler writes on failure), or
    the pod's own status message; "" when none says anything."""
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True):
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            if terminated.get("message"):
                return str(terminated["message"]).strip()
        if (pod.get("status") or {}).get("message"):
            return str(pod["status"]["message"]).strip()
    return ""
