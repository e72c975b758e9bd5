"""Plan -> Kubernetes manifests (plain dicts for server-side apply). Pure: no kopf, no kubernetes."""

from typing import Any

from llmpack.render.autoscaling import horizontal_pod_autoscaler
from llmpack.render.plan import ServingPlan, kube_name, label_value
from llmpack.render.profiling import render_profiling
from llmpack.render.serving import inference_pool, serving_objects


def render_serving(plan: ServingPlan) -> list[dict[str, Any]]:
    """Everything that serves `plan`, in apply order: the replicas' objects, then (with
    spec.autoscaling) the HorizontalPodAutoscaler that scales them, then (with
    spec.serving.inferencePool) the InferencePool."""
    objects = serving_objects(plan)
    if plan.autoscaling is not None:
        objects.append(horizontal_pod_autoscaler(plan))
    if plan.inference_pool is not None:
        # last: its CRD may be missing, and a refused apply stops the ones after it
        objects.append(inference_pool(plan))
    return objects


__all__ = ["kube_name", "label_value", "render_profiling", "render_serving"]
