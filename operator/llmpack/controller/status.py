"""Status bookkeeping: phases and standard conditions, as Kubernetes API conventions define them.

Pure: computes the next status from the previous one; the reconciler decides what happened and
writes the result once per reconcile.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from llmpack.api.llmdeployment import (
    ADVISED,
    AVAILABLE,
    CONDITION_TYPES,
    DEGRADED,
    PROFILE_READY,
    PROGRESSING,
    Condition,
    ConditionStatus,
    LLMDeploymentStatus,
)
from llmpack.runtime.kube import quota_refusal

__all__ = ["ADVISED", "AVAILABLE", "CONDITION_TYPES", "DEGRADED", "PROFILE_READY", "PROGRESSING"]


def now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def set_condition(
    status: LLMDeploymentStatus,
    type_: str,
    value: bool | None,
    reason: str,
    message: str = "",
    generation: int | None = None,
) -> None:
    """Set one condition; lastTransitionTime moves only when the status value changes."""
    text: ConditionStatus = "Unknown" if value is None else ("True" if value else "False")
    for index, existing in enumerate(status.conditions):
        if existing.type == type_:
            changed = existing.status != text
            status.conditions[index] = Condition(
                type=type_,
                status=text,
                reason=reason,
                message=message,
                last_transition_time=now() if changed else existing.last_transition_time,
                observed_generation=generation,
            )
            return
    status.conditions.append(
        Condition(
            type=type_,
            status=text,
            reason=reason,
            message=message,
            last_transition_time=now(),
            observed_generation=generation,
        )
    )
    status.conditions.sort(key=lambda c: CONDITION_TYPES.index(c.type) if c.type in CONDITION_TYPES else 99)


def get_condition(status: LLMDeploymentStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


def comparable(status: dict) -> dict:
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


def deployment_problem(deployment: dict[str, Any]) -> tuple[str, str] | None:
    """What stops a Deployment's rollout, from the Deployment controller's own conditions, as
    (reason, message); None while it progresses. Pods its ReplicaSet cannot create (ReplicaFailure:
    a ResourceQuota, an admission policy on pods) come first; then a rollout that made no progress
    for progressDeadlineSeconds (Progressing=False, ProgressDeadlineExceeded). Conditions of an
    earlier generation are not trusted: the controller has not looked at the current spec yet."""
    meta, status = deployment["metadata"], deployment.get("status") or {}
    if status.get("observedGeneration") != meta.get("generation"):
        return None
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    name = meta["name"]
    failure = conditions.get("ReplicaFailure")
    if failure and failure.get("status") == "True":
        message = failure.get("message", "")
        # The ReplicaSet controller's condition holds the API server's refusal as text only.
        reason = "QuotaExceeded" if quota_refusal(message) else failure.get("reason") or "FailedCreate"
        return reason, f"the Deployment {name} cannot create its pods: {message}"
    progressing = conditions.get("Progressing")
    if progressing and progressing.get("status") == "False":
        reason = progressing.get("reason") or "ProgressDeadlineExceeded"
        return reason, f"the Deployment {name} made no progress: {progressing.get('message', '')}"
    return None
