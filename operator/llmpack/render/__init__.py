"""Plan -> Kubernetes manifests (plain dicts for server-side apply). Pure: no kopf, no kubernetes."""

from llmpack.render.plan import kube_name, label_value
from llmpack.render.profiling import render_profiling
from llmpack.render.serving import render_serving

__all__ = ["kube_name", "label_value", "render_profiling", "render_serving"]
