"""GPU facts the advisor and the planner need: memory, bandwidth and MIG profiles per product.
Pure data: no Kubernetes client here."""

from llmpack.api.llmdeployment import MPS_MAX_CLIENTS  # the API bounds sharing by it
from llmpack.hardware.gpus import (
    GPU,
    GPUS,
    MIGProfile,
    ProductLabel,
    UnknownGPUError,
    known_products,
    lookup_gpu,
    parse_gpu_product,
)

__all__ = [
    "GPU",
    "GPUS",
    "MPS_MAX_CLIENTS",
    "MIGProfile",
    "ProductLabel",
    "UnknownGPUError",
    "known_products",
    "lookup_gpu",
    "parse_gpu_product",
]
