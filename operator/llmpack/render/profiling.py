"""ProfilingPlan -> the profiling Job and the least-privileged identity it publishes its result with.

Pure, like render/serving.py, whose pod building blocks it shares: the profiling pod is hardened
exactly like a serving pod, except that it mounts its ServiceAccount token, because publishing the
result is its job.

Objects, in apply order: the result ConfigMap (created empty by the operator, so that the Job needs
no `create` permission), a ServiceAccount, a Role that allows get/update/patch of that one ConfigMap
and nothing else, its RoleBinding, for a product that only DRA offers a ResourceClaimTemplate for
one whole GPU, and the Job.
"""

from __future__ import annotations

import re
from typing import Any

from llmpack.hardware.cluster import GPU_PRODUCT_LABEL, GPU_RESOURCE, MIG_RESOURCE_PREFIX
from llmpack.render.plan import LABEL_PROFILE_KEY, MAX_NAME, ProfilingPlan, label_value
from llmpack.render.serving import (
    COMPONENT_PROFILER,
    DRA_CLAIM,
    common_labels,
    container_resources,
    container_security_context,
    hardened_pod_spec,
    hf_token_env,
    merge_env,
    metadata,
    model_cache_env,
    model_cache_mounts,
    model_cache_volumes,
    whole_gpu_request,
    workspace_env,
    workspace_mounts,
)

RESULT_CONFIGMAP_ENV = "LLMPACK_RESULT_CONFIGMAP"
RESULT_VERBS = ["get", "update", "patch"]
_DNS_1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def render_profiling(plan: ProfilingPlan) -> list[dict[str, Any]]:
    """The objects of one profiling run. Names are used exactly as planned (the controller reads the
    Job and the result ConfigMap back by them, and the profiler gets the ConfigMap's name in its
    args), so a name Kubernetes would reject is a planning bug and raises here."""
    _check_names(plan)
    return [
        result_configmap(plan),
        profiler_service_account(plan),
        result_writer_role(plan),
        result_writer_binding(plan),
        *([gpu_claim_template(plan)] if plan.dra else []),
        profiling_job(plan),
    ]


def _check_names(plan: ProfilingPlan) -> None:
    # The Job's name becomes a label value of its pods (63 characters at most).
    if len(plan.name) > MAX_NAME or not _DNS_1123_LABEL.fullmatch(plan.name):
        raise ValueError(f"profiling Job name {plan.name!r} is not a DNS-1123 label of at most 63 characters")
    if len(plan.result_configmap) > 253 or not _DNS_1123_SUBDOMAIN.fullmatch(plan.result_configmap):
        raise ValueError(f"result ConfigMap name {plan.result_configmap!r} is not a DNS-1123 subdomain")


def profiling_labels(plan: ProfilingPlan) -> dict[str, str]:
    return {
        **common_labels(plan.name, plan.owner.name, COMPONENT_PROFILER),
        LABEL_PROFILE_KEY: label_value(plan.profile_key),
    }


def _meta(plan: ProfilingPlan, name: str) -> dict[str, Any]:
    return metadata(name, plan.namespace, profiling_labels(plan), plan.owner)


def result_configmap(plan: ProfilingPlan) -> dict[str, Any]:
    """Created empty (no `data` at all, so a re-apply by the operator can never clear what the Job
    wrote: server-side apply only removes fields its manager set before)."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(plan, plan.result_configmap)}


def profiler_service_account(plan: ProfilingPlan) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(plan, plan.name)}


def result_writer_role(plan: ProfilingPlan) -> dict[str, Any]:
    """The Job can read and write its own result ConfigMap and nothing else: no create, no list,
    no other ConfigMap (a result written elsewhere could poison the shared profile cache)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(plan, plan.name),
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [plan.result_configmap],
                "verbs": list(RESULT_VERBS),
            }
        ],
    }


def result_writer_binding(plan: ProfilingPlan) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(plan, plan.name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": plan.name},
        "subjects": [{"kind": "ServiceAccount", "name": plan.name, "namespace": plan.namespace}],
    }


def gpu_claim_template(plan: ProfilingPlan) -> dict[str, Any]:
    """The profiled engine's whole GPUs (one, unless tensor or pipeline parallel) of the DRA driver's
    class, with no sharing configured: a device allocated to
    one claim is that claim's alone, so the profiler measures the GPU as exclusive mode would."""
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": _meta(plan, plan.name),
        "spec": {
            "metadata": {"labels": profiling_labels(plan)},
            "spec": {"devices": {"requests": [whole_gpu_request(plan.gpus)]}},
        },
    }


def profiling_job(plan: ProfilingPlan) -> dict[str, Any]:
    """The engine's exclusive GPUs (one, unless tensor or pipeline parallel; or one MIG slice of the
    profile to be served on) on a node of the product.

    No ttlSecondsAfterFinished: the controller reads the finished Job (its conditions, the pod's
    termination message) and deletes it itself once the result is in the cache."""
    pod = hardened_pod_spec(
        [profiler_container(plan)],
        node_selector={**plan.node_selector, GPU_PRODUCT_LABEL: plan.gpu_product},
        tolerations=plan.tolerations,
        shm=True,
        automount_token=True,  # it publishes its result through the API
    )
    pod["restartPolicy"] = "Never"
    pod["volumes"] += model_cache_volumes(plan.model_cache_claim)
    pod["serviceAccountName"] = plan.name
    if plan.dra:
        pod["resourceClaims"] = [{"name": DRA_CLAIM, "resourceClaimTemplateName": plan.name}]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(plan, plan.name),
        "spec": {
            "backoffLimit": plan.backoff_limit,
            "activeDeadlineSeconds": plan.active_deadline_seconds,
            "template": {
                "metadata": {
                    "labels": profiling_labels(plan),
                    "annotations": {"kubectl.kubernetes.io/default-container": "profiler"},
                },
                "spec": pod,
            },
        },
    }


def profiler_container(plan: ProfilingPlan) -> dict[str, Any]:
    """`llmpack profile ARGS`, written out as the command so the Job does not depend on the image's
    ENTRYPOINT. The termination message falls back to the log tail, so a crash explains itself in
    the LLMDeployment's status."""
    gpu = MIG_RESOURCE_PREFIX + plan.mig_profile if plan.mig_profile else GPU_RESOURCE
    gpu_limits, claims = ({}, [{"name": DRA_CLAIM}]) if plan.dra else ({gpu: plan.gpus}, None)
    env: list[dict[str, Any]] = [
        {"name": RESULT_CONFIGMAP_ENV, "value": plan.result_configmap},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    return {
        "name": "profiler",
        "image": plan.image,
        "command": ["llmpack", "profile"],
        "args": list(plan.args),
        "env": merge_env(
            workspace_env(), env, hf_token_env(plan.hf_token_secret), model_cache_env(plan.model_cache_claim)
        ),
        "resources": container_resources(None, gpu_limits, claims),
        "volumeMounts": workspace_mounts(shm=True) + model_cache_mounts(plan.model_cache_claim),
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
