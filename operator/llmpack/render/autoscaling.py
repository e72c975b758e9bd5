"""The HorizontalPodAutoscaler of an LLMDeployment with spec.autoscaling (autoscaling/v2).

It targets the LLMDeployment itself: its scale subresource scales spec.gpu.count (api/crd.py
SCALE_SUBRESOURCE), and its status.selector names the serving pods the HPA averages a Pods
metric over. The metric (requests running plus waiting per pod) comes from the cluster's custom
metrics adapter (the README has a prometheus-adapter rule); llmpack sets its name and the target.

The target is per pod in the HPA's units, which are GPUs here: the HPA computes
ceil(average per pod / target x the number of pods) and writes it as the scale's replicas. A DRA
MPS pod is one GPU; in the other modes k pods share a GPU (k = replicas per GPU) and each sees 1/k
of its load. Setting the target to target utilisation x B_opt x replicas per GPU (the advised
concurrency of one GPU) makes that formula come out in GPUs in every mode:
ceil(load per GPU / k / (u x B_opt x k) x k x GPUs) = ceil(load per GPU / (u x B_opt x k) x GPUs).
(MIG with fewer slices than GPUs x k breaks the constant k; the count is then approximate.)
"""

from __future__ import annotations

import math
from typing import Any

from llmpack.render.plan import ServingPlan
from llmpack.render.serving import object_meta, serving_name


def horizontal_pod_autoscaler(plan: ServingPlan) -> dict[str, Any]:
    if plan.autoscaling is None:
        raise ValueError("the plan has no autoscaling")
    scaling = plan.autoscaling
    spec: dict[str, Any] = {
        "scaleTargetRef": {
            "apiVersion": plan.owner.api_version,
            "kind": plan.owner.kind,
            "name": plan.owner.name,
        },
        "minReplicas": scaling.min_gpus,
        "maxReplicas": scaling.max_gpus,
        "metrics": [
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": scaling.metric},
                    "target": {"type": "AverageValue", "averageValue": quantity(scaling.target_per_pod)},
                },
            }
        ],
    }
    if scaling.behavior:
        spec["behavior"] = scaling.behavior
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": object_meta(plan, serving_name(plan)),
        "spec": spec,
    }


def quantity(value: float) -> str:
    """A Kubernetes quantity: whole numbers as such, else in thousandths (153.6 -> "153600m"),
    rounded up so the target never asks for less headroom than planned."""
    milli = math.ceil(round(value * 1000, 6))
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"
