"""The Batching Configuration Advisor (BCA), the memory model and replica packing. Pure: no
Kubernetes client, no kopf. Entry point: `advise(profile, options, gpu) -> Recommendation`."""

from llmpack.advisor.errors import AdvisorError, PaperDataError, UnknownModelError
from llmpack.advisor.gpus import gpu_for_profile
from llmpack.advisor.options import DEFAULT_EPSILON, AdvisorOptions
from llmpack.advisor.recommend import advise

__all__ = [
    "DEFAULT_EPSILON",
    "AdvisorError",
    "AdvisorOptions",
    "PaperDataError",
    "UnknownModelError",
    "advise",
    "gpu_for_profile",
]
