"""What a Deployment's own conditions say stops its rollout, read while observing: the API
server gives a quota's refusal only as text (runtime/kube.py quota_refusal), so the reading
belongs beside the client that knows that text."""

from __future__ import annotations

from typing import Any

from llmpack.runtime.kube import quota_refusal


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
