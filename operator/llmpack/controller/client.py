"""The runtime's API client (runtime/kube.py), told about llmpack's own kind: whoever talks to the
API server about LLMDeployments (the operator, the tests, the benchmarks) imports the client from
here, so that the LLMDeployment kind's path and llmpack's field manager are known."""

from llmpack.api import gpupool
from llmpack.api.llmdeployment import API_VERSION, KIND, PLURAL
from llmpack.runtime import kube
from llmpack.runtime.kube import ErrorClass, KubeClient, KubeError, register_kind

register_kind(KIND, API_VERSION, PLURAL, namespaced=True)
register_kind(gpupool.KIND, API_VERSION, gpupool.PLURAL, namespaced=True)
# llmpack owns the fields it renders under this manager (server-side apply) and posts events as
# this component.
kube.DEFAULTS.update(field_manager="llmpack", component="llmpack-operator")

__all__ = ["ErrorClass", "KubeClient", "KubeError"]
