"""What one replica's vLLM process sees as its device under each sharing mode, and the
--gpu-memory-utilization (and DRA MPS pinned limit) that follows: the one place this is decided.
`llmpack advise` reports it for MPS through a DRA claim; the planner for the mode it chooses.

Pure. The rule is vLLM 0.32's start-up check (vllm/v1/worker/utils.py request_memory; FACTS 1.1,
1.2); tests/engine/test_request_memory.py runs vLLM's own function on what llmpack renders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmpack.advisor.errors import AdvisorError
from llmpack.advisor.memory import GIB, gpu_memory_utilization_for
from llmpack.advisor.packing import STARTUP_RESERVE_BYTES
from llmpack.hardware import GPU
from llmpack.hardware.sharing import DoesNotFit, Sharing

# What a replica's process already holds, or may find missing, when vLLM checks free memory at
# start-up: its own CUDA context (taken before the check), and under MPS the gap between the
# NVML total the caps are computed from and the smaller total CUDA hands out. The advisor packs
# with the same reserve (a CUDA context plus slack).
STARTUP_CHECK_MARGIN_BYTES = STARTUP_RESERVE_BYTES
MIN_UTILIZATION = 0.001  # the flag is rendered with three decimals


class ReplicaDoesNotFit(AdvisorError):
    """One replica does not fit in what its sharing mode lets its process hold; the message
    names what to change."""

    reason = "ReplicaDoesNotFit"


@dataclass(frozen=True)
class ReplicaMemory:
    """What one replica's vLLM process sees as its device, and the flags that follow from it.

    vLLM 0.32 refuses to start when the free memory at start-up is below ceil(total x
    --gpu-memory-utilization), also with --kv-cache-memory-bytes (vllm/v1/worker/utils.py
    request_memory; FACTS 1.1, 1.2). `total_bytes` is the most cudaMemGetInfo can say is the
    device's total, `limit_bytes` the least it can say is free before the process allocates."""

    total_bytes: int  # the whole GPU as NVML reports it, or the MIG slice (the size in its name)
    limit_bytes: int  # what this process may hold: its MPS pinned limit, else the device
    gpu_memory_utilization: float  # <= (limit - margin) / total, rounded down to 0.001
    mps_pinned_memory_bytes: int | None  # the per-client limit llmpack itself sets (DRA claim)
    presented: str  # the device as the process sees it, in words

    @property
    def requested_bytes(self) -> int:
        """What vLLM's start-up check asks to be free, at most."""
        return math.ceil(self.total_bytes * self.gpu_memory_utilization)


def replica_memory(
    sharing: Sharing,
    gpu: GPU,
    per_replica_bytes: int,
    *,
    replicas_per_gpu: int = 1,
) -> ReplicaMemory:
    """The one decision of --gpu-memory-utilization (and of the DRA claim's MPS memory limit),
    from what `sharing` presents to one replica's process (hardware/sharing.py `Device`; `gpu`
    carries the total the node reports, nvidia.com/gpu.memory, or the catalogue's):

    - exclusive: the whole GPU; total = its NVML total, free = what CUDA hands out of it.
    - mps/dra: free = the claim's per-client pinned limit, which llmpack sets to the replica's
      memory; total = the whole GPU. All replicas' limits must fit on the GPU together.
    - mps/devicePlugin: free = the limit the device plugin's MPS daemon pins every client to,
      the GPU's NVML total / the node's nvidia.com/gpu.replicas (per GPU; hardware/cluster.py),
      whatever llmpack packs; total = the whole GPU.
    - mig: the slice is the device; total = the slice.

    The utilisation is the replica's memory over the total, but never above (limit - a CUDA
    context's margin) / total, so that the check passes under a cap: the KV cache is sized by
    --kv-cache-memory-bytes, so the utilisation only has to pass that check. Raises
    ReplicaDoesNotFit, naming what to change, when the replica's memory exceeds what the mode
    lets one process hold."""
    need = per_replica_bytes
    # llmpack never pins a client so low that the start-up check could not pass (a CUDA context
    # plus the smallest utilisation vLLM is given).
    floor = STARTUP_CHECK_MARGIN_BYTES + math.ceil(gpu.reported_memory_bytes * MIN_UTILIZATION)
    try:
        device = sharing.device(
            gpu,
            need_bytes=need,
            replicas_per_gpu=replicas_per_gpu,
            floor_bytes=floor,
            reserve_bytes=STARTUP_RESERVE_BYTES,
        )
    except DoesNotFit as err:
        raise ReplicaDoesNotFit(str(err)) from err
    total, limit, presented = device.total_bytes, device.limit_bytes, device.presented
    if need > limit:
        raise ReplicaDoesNotFit(
            f"{sharing.label}: one replica needs {_gib(need)} but each replica's process gets {presented}, "
            f"so vLLM would run out of memory; lower workload tokens, advisor.maxNumSeqs or "
            f"model.maxModelLen, or use {device.fix}"
        )
    room = limit - STARTUP_CHECK_MARGIN_BYTES
    if room < math.ceil(total * MIN_UTILIZATION):
        raise ReplicaDoesNotFit(
            f"{sharing.label}: {presented} leaves nothing free once a CUDA context exists; use {device.fix}"
        )
    utilization = gpu_memory_utilization_for(min(need, room), total)
    return ReplicaMemory(
        total_bytes=total,
        limit_bytes=limit,
        gpu_memory_utilization=utilization,
        mps_pinned_memory_bytes=device.pinned_bytes,
        presented=presented,
    )


def _gib(size: int) -> str:
    return f"{size / GIB:.1f} GiB"
