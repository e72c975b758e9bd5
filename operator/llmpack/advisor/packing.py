"""How many replicas of one size fit on a GPU (MPS) or which MIG slice holds one, and how much
memory that frees compared with a single vLLM instance left at its defaults.

Slots. Each replica gets an equal slot of the GPU and `--gpu-memory-utilization = slot / total`.
vLLM checks at start-up that this fraction of the device is still free, *after* its own CUDA
context exists (FACTS 1.1). Replicas start one after another, so the last one to start sees
`total - its context - the others' use` free. Taking the slots from `total - one CUDA context`
(STARTUP_RESERVE_BYTES, a context with some slack) makes that check pass whenever every replica
stays within its slot:

    slot = (usable - reserve) / R,   R = min(floor((usable - reserve) / per_replica),
                                             max_replicas_per_gpu, 48 MPS clients)

so R x per-replica memory <= R x slot < the GPU's memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmpack.advisor.errors import AdvisorError
from llmpack.advisor.memory import CUDA_CONTEXT_BYTES, GIB, MIB, gpu_memory_utilization_for
from llmpack.hardware import GPU, MPS_MAX_CLIENTS, MIGProfile

# The CUDA context of the replica being started (0.6-0.66 GiB measured in the paper's logs; our
# CUDA_CONTEXT_BYTES is 0.75 GiB) plus 0.25 GiB of slack, so the start-up check also passes when
# a newer CUDA or vLLM creates a somewhat larger context.
STARTUP_RESERVE_BYTES = CUDA_CONTEXT_BYTES + 256 * MIB


@dataclass(frozen=True)
class Packing:
    replicas_per_gpu: int
    slot_bytes: int
    gpu_memory_utilization: float
    limited_by: str  # "memory", "max_replicas_per_gpu", "MPS client limit" or "override"
    fit_by_memory: int  # how many replicas the memory alone would hold


def fit_by_memory(per_replica_bytes: int, device_total_bytes: int) -> int:
    """Replicas of `per_replica_bytes` whose slots fit in a device of `device_total_bytes`."""
    if per_replica_bytes <= 0:
        raise ValueError("per-replica memory must be positive")
    room = device_total_bytes - STARTUP_RESERVE_BYTES
    return max(room // per_replica_bytes, 0)


def pack_replicas(
    per_replica_bytes: int,
    device_total_bytes: int,
    *,
    max_replicas_per_gpu: int = 8,
    fixed_replicas: int | None = None,
    device_name: str = "the GPU",
) -> Packing:
    """Replicas per GPU and the slot of each. Raises AdvisorError when not even one fits, or when
    a fixed count does not fit."""
    by_memory = fit_by_memory(per_replica_bytes, device_total_bytes)
    need = _gib(per_replica_bytes)
    have = _gib(device_total_bytes - STARTUP_RESERVE_BYTES)
    if by_memory < 1:
        raise AdvisorError(
            f"one replica needs {need} but {device_name} offers {have} after vLLM's start-up reserve; "
            "use a GPU with more memory, a smaller --max-model-len or batch size, or a smaller model"
        )
    if fixed_replicas is not None:
        if fixed_replicas > by_memory:
            raise AdvisorError(
                f"replicasPerGPU={fixed_replicas} does not fit: each replica needs {need} and "
                f"{device_name} holds {by_memory} ({have}); lower replicasPerGPU to {by_memory} or less"
            )
        replicas, limited_by = fixed_replicas, "override"
    else:
        cap = min(max_replicas_per_gpu, MPS_MAX_CLIENTS)
        if by_memory <= cap:
            replicas, limited_by = by_memory, "memory"
        elif cap == MPS_MAX_CLIENTS:
            replicas, limited_by = cap, "MPS client limit"
        else:
            replicas, limited_by = cap, "max_replicas_per_gpu"
    slot = slot_bytes(device_total_bytes, replicas)
    return Packing(
        replicas_per_gpu=replicas,
        slot_bytes=slot,
        gpu_memory_utilization=gpu_memory_utilization_for(slot, device_total_bytes),
        limited_by=limited_by,
        fit_by_memory=by_memory,
    )


def slot_bytes(device_total_bytes: int, replicas: int) -> int:
    """The equal share of the device each of `replicas` replicas may use."""
    return (device_total_bytes - STARTUP_RESERVE_BYTES) // replicas


@dataclass(frozen=True)
class MIGPlacement:
    profile: MIGProfile
    instances_per_gpu: int


def smallest_mig_profile(per_replica_bytes: int, gpu: GPU) -> MIGPlacement | None:
    """The smallest MIG profile (least memory, then fewest compute slices) that holds one replica,
    and how many instances of it one GPU holds; None when the GPU has no MIG or nothing fits."""
    fitting = [p for p in gpu.mig_profiles if fit_by_memory(per_replica_bytes, p.memory_bytes) >= 1]
    if not fitting:
        return None
    best = min(fitting, key=lambda p: (p.memory_bytes, p.compute_slices))
    return MIGPlacement(profile=best, instances_per_gpu=best.max_instances)


@dataclass(frozen=True)
class MemoryFreed:
    baseline_kv_pool_bytes: int
    kv_in_use_bytes: int
    freed_bytes: int
    fraction: float  # of the GPU's memory


def memory_freed(baseline_kv_pool_bytes: int, kv_in_use_bytes: int, gpu_memory_bytes: int) -> MemoryFreed:
    """Memory a replica sized for B_opt leaves free compared with one vLLM instance with defaults,
    which reserves `baseline_kv_pool_bytes` of KV cache whatever it uses. Following the paper, it
    is the default KV pool minus the KV in use at B_opt, as a fraction of the GPU's memory (the
    capacity in its name: 64 GiB for the paper's H100; see test_bca's fidelity cases)."""
    freed = max(baseline_kv_pool_bytes - kv_in_use_bytes, 0)
    return MemoryFreed(
        baseline_kv_pool_bytes=baseline_kv_pool_bytes,
        kv_in_use_bytes=kv_in_use_bytes,
        freed_bytes=freed,
        fraction=freed / gpu_memory_bytes,
    )


def default_kv_pool_bytes(usable_memory_bytes: int, non_kv_bytes: int, gpu_memory_utilization: float) -> int:
    """KV pool vLLM reserves with defaults: utilization x device total minus everything else."""
    return max(math.floor(usable_memory_bytes * gpu_memory_utilization) - non_kv_bytes, 0)


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"
