"""The HorizontalPodAutoscaler of an LLMDeployment with spec.autoscaling (autoscaling/v2).

It targets the LLMDeployment itself: its scale subresource scales spec.gpu.count (api/crd.py
SCALE_SUBRESOURCE), so the HPA's replicas are GPUs. The metric, requests running plus waiting,
comes from the cluster's metrics adapter (the README has prometheus-adapter rules); llmpack sets its
name (the chart's autoscaling.metricName) and the target, the planner's: target utilisation x
B_opt x replicas per GPU, the requests in flight one GPU should hold.

Which metric type depends on how many serving pods share a GPU (k), because of how the HPA
controller counts (pkg/controller/podautoscaler/replica_calculator.go):

- k = 1 (a DRA MPS pod holds all of a GPU's replicas; exclusive): a Pods metric, averaged over the
  pods of status.selector, target per pod = per GPU. The HPA keeps the count while the average is
  within 10% of the target, else asks ceil(average / target x pods) = GPUs.
- k > 1 (device-plugin MPS and MIG run one replica per pod), a pod holding several GPUs (a
  replica spanning them, k < 1), or a GPUPool member (one pod per pool GPU it shares, holding
  some of a GPU's worth of its replicas): a Pods metric would be wrong. The HPA
  multiplies its ratio by the pod count, and its 10% tolerance applies to the per-pod ratio, so no
  single per-pod target makes both come out in GPUs. An External metric with an AverageValue target
  does: the HPA asks ceil(total / target) and tolerates |total / (target x current GPUs) - 1| <= 10%.
  Its selector names the LLMDeployment (`llmdeployment: NAME`, the serving pods' label
  llmpack.io/llmdeployment as Prometheus relabels it); the adapter sums the series it selects.
"""

from __future__ import annotations

import math
from typing import Any

from llmpack.render.plan import ServingPlan, label_value
from llmpack.render.serving import object_meta, serving_name

# The label the External metric's selector matches: the serving pods' llmpack.io/llmdeployment,
# under a name a Prometheus series can carry (the README's relabelling gives it).
EXTERNAL_METRIC_LABEL = "llmdeployment"


def horizontal_pod_autoscaler(plan: ServingPlan) -> dict[str, Any]:
    if plan.autoscaling is None:
        raise ValueError("the plan has no autoscaling")
    scaling = plan.autoscaling
    target = {"type": "AverageValue", "averageValue": quantity(scaling.target_per_gpu)}
    if scaling.pods_per_gpu == 1 and scaling.gpus_per_pod == 1 and plan.pool_slots is None:
        metric = {"type": "Pods", "pods": {"metric": {"name": scaling.metric}, "target": target}}
    else:
        selector = {"matchLabels": {EXTERNAL_METRIC_LABEL: label_value(plan.name)}}
        metric = {
            "type": "External",
            "external": {"metric": {"name": scaling.metric, "selector": selector}, "target": target},
        }
    spec: dict[str, Any] = {
        "scaleTargetRef": {
            "apiVersion": plan.owner.api_version,
            "kind": plan.owner.kind,
            "name": plan.owner.name,
        },
        "minReplicas": scaling.min_gpus,
        "maxReplicas": scaling.max_gpus,
        "metrics": [metric],
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
