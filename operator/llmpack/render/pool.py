"""GPUPool -> its ResourceClaims: one per pool GPU, shared by the members' pods placed on it. Pure.

A ResourceClaim's spec is immutable, so a claim's name carries a hash of its MPS configuration: a
GPU whose claim must change (a rebalance, or a GPU emptied and opened again for larger replicas)
gets a new claim, and the pods move to it as their Deployments change.
"""

from __future__ import annotations

from typing import Any

from llmpack.render.plan import (
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    OwnerRef,
    kube_name,
    label_value,
    stable_hash,
)
from llmpack.render.serving import LABEL_POOL_GPU, mps_claim_spec

LABEL_POOL = "llmpack.io/gpupool"
COMPONENT_POOL_GPU = "pool-gpu"


def pool_claim_name(pool: str, gpu: int, pinned_bytes: int) -> str:
    """`<pool>-gpu-<index>-<hash of the claim's spec>`."""
    spec = mps_claim_spec(pinned_memory_bytes=pinned_bytes, active_thread_percentage=None)
    return kube_name(pool, "gpu", str(gpu), stable_hash(spec)[:6])


def pool_labels(pool: str) -> dict[str, str]:
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: COMPONENT_POOL_GPU, LABEL_POOL: label_value(pool)}


def claim_gpu(claim: dict[str, Any]) -> int | None:
    """The pool GPU index a pool claim stands for (its LABEL_POOL_GPU label)."""
    value = ((claim.get("metadata") or {}).get("labels") or {}).get(LABEL_POOL_GPU)
    return int(value) if value is not None and value.isdigit() else None


def pool_claim(*, pool: str, namespace: str, owner: OwnerRef, gpu: int, pinned_bytes: int) -> dict[str, Any]:
    """The ResourceClaim of pool GPU `gpu`: one whole GPU under MPS, every client's default pinned
    memory limit `pinned_bytes` (the largest member's cap on it; each replica's own, lower cap is
    its container's CUDA_MPS_PINNED_DEVICE_MEM_LIMIT). No thread percentage: members of
    different sizes share the GPU's time as MPS schedules it."""
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {
            "name": pool_claim_name(pool, gpu, pinned_bytes),
            "namespace": namespace,
            "labels": {**pool_labels(pool), LABEL_POOL_GPU: str(gpu)},
            "ownerReferences": [owner.to_k8s()],
        },
        "spec": mps_claim_spec(pinned_memory_bytes=pinned_bytes, active_thread_percentage=None),
    }


__all__ = ["LABEL_POOL", "claim_gpu", "pool_claim", "pool_claim_name", "pool_labels"]
