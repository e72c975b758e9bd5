"""GPU facts the advisor and the planner need: memory, bandwidth and MIG profiles per product.
Pure data: no Kubernetes client here."""

from llmpack.hardware.gpus import (
    GPU,
    GPUS,
    MPS_MAX_CLIENTS,
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
