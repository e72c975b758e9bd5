"""ModelCachePlan -> the PersistentVolumeClaim that holds a model's files and the Job that fills it,
or, for a claim the cluster admin filled and shares, the Job that checks it.

Pure, like render/serving.py, whose pod building blocks it shares. The Job runs `llmpack
fill-model-cache` (in the profiler's image) with the claim mounted read-write; the profiling Job
and the serving pods mount the same claim read-only and load offline (serving.model_cache_env).
The Job is kept after it succeeds: its success is the operator's record that the cache is full
(the fill command verifies every file it downloaded; run again, it downloads nothing already there).
A shared claim is never rendered (the admin's, not the operator's to change or delete): its Job
mounts it read-only and runs `llmpack fill-model-cache --verify-only`, which checks the files
against the record the admin's fill left and, for a gated or private model, that this namespace's
own token may read it on the Hub.

Limits: one cache of its own per LLMDeployment and model revision (two LLMDeployments of one model
in a namespace each fill their own, or share the admin's); no cache the operator fills crosses
namespaces, so a gated model's files, fetched with one namespace's token, never serve another.
"""

from __future__ import annotations

from typing import Any

from llmpack.render.plan import ANNOTATION_CLAIM_UID, ModelCachePlan
from llmpack.render.serving import (
    COMPONENT_MODEL_CACHE,
    MODEL_CACHE_MOUNT,
    common_labels,
    container_security_context,
    hardened_pod_spec,
    hf_token_env,
    merge_env,
    metadata,
    model_cache_mounts,
    model_cache_volumes,
    workspace_env,
    workspace_mounts,
)

# A download of tens of GB from the hub takes minutes to an hour; retried twice (a network blip),
# then the failure goes to the status with the command's own words.
FILL_DEADLINE_S = 6 * 3600
FILL_BACKOFF_LIMIT = 2


def render_model_cache(plan: ModelCachePlan) -> list[dict[str, Any]]:
    """The claim, then the Job that fills it; a shared claim's check Job alone."""
    if plan.shared:
        return [fill_job(plan)]
    return [model_cache_claim(plan), fill_job(plan)]


def model_cache_labels(plan: ModelCachePlan) -> dict[str, str]:
    return common_labels(plan.name, plan.owner.name, COMPONENT_MODEL_CACHE)


def model_cache_claim(plan: ModelCachePlan) -> dict[str, Any]:
    if plan.shared or plan.size is None:
        raise ValueError(
            f"{plan.name} is the cluster admin's claim, or has no size: not the operator's to make"
        )
    spec: dict[str, Any] = {
        "accessModes": [plan.access_mode],
        "resources": {"requests": {"storage": plan.size}},
    }
    if plan.storage_class_name:
        spec["storageClassName"] = plan.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(plan.name, plan.namespace, model_cache_labels(plan), plan.owner),
        "spec": spec,
    }


def fill_job(plan: ModelCachePlan) -> dict[str, Any]:
    """No GPU, no API access (no token mounted): it only downloads into the claim, or reads a
    shared one (mounted read-only)."""
    args = [
        "--model",
        plan.model,
        "--cache-dir",
        MODEL_CACHE_MOUNT,
        "--termination-log",
        "/dev/termination-log",
    ]
    if plan.revision:
        args[2:2] = ["--revision", plan.revision]
    if plan.shared:
        args.append("--verify-only")
    writes = not plan.shared
    container = {
        "name": "fill",
        "image": plan.image,
        "command": ["llmpack", "fill-model-cache"],
        "args": args,
        "env": merge_env(workspace_env(), hf_token_env(plan.hf_token_secret)),
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
        "volumeMounts": workspace_mounts(shm=False) + model_cache_mounts(plan.name, read_only=not writes),
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod = hardened_pod_spec([container], node_selector={}, tolerations=[], shm=False, automount_token=False)
    pod["volumes"] += model_cache_volumes(plan.name, read_only=not writes)
    pod["restartPolicy"] = "Never"
    labels = model_cache_labels(plan)
    meta = metadata(plan.job, plan.namespace, labels, plan.owner)
    if plan.shared:
        meta.setdefault("annotations", {})[ANNOTATION_CLAIM_UID] = plan.claim_uid or ""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": FILL_BACKOFF_LIMIT,
            "activeDeadlineSeconds": FILL_DEADLINE_S,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }
