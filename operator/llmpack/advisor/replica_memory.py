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
from llmpack.advisor.memory import GIB, MIB, gpu_memory_utilization_for
from llmpack.advisor.packing import STARTUP_RESERVE_BYTES
from llmpack.hardware import GPU, MIGProfile

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
    mode: str,
    provider: str | None,
    gpu: GPU,
    per_replica_bytes: int,
    *,
    replicas_per_gpu: int = 1,
    device_plugin_replicas: int | None = None,
    mig: MIGProfile | None = None,
) -> ReplicaMemory:
    """The one decision of --gpu-memory-utilization (and of the DRA claim's MPS memory limit),
    from what each sharing mode presents to one replica's process (`gpu` carries the total the
    node reports, nvidia.com/gpu.memory, or the catalogue's):

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
    total = gpu.reported_memory_bytes
    mib = f"{gpu.reported_memory_mib:,} MiB"
    pinned = None
    if mode == "mig":
        if mig is None:
            raise ValueError("mode mig needs the MIG profile")
        total, limit = mig.nominal_bytes, mig.memory_bytes
        presented = f"a {mig.name} MIG slice ({_gib(limit)} usable)"
        fix = "a larger sharing.migProfile"
    elif mode == "exclusive":
        limit = gpu.usable_memory_bytes
        presented = f"a whole {gpu.product} ({mib}, {_gib(limit)} usable)"
        fix = "a GPU with more memory"
    elif provider == "dra":
        # llmpack sets this limit: the replica's memory, and never so little that the start-up
        # check could not pass (a CUDA context plus the smallest utilisation vLLM is given).
        limit = pinned = max(need, STARTUP_CHECK_MARGIN_BYTES + math.ceil(total * MIN_UTILIZATION))
        room = gpu.usable_memory_bytes - STARTUP_RESERVE_BYTES
        if replicas_per_gpu * limit > room:
            raise ReplicaDoesNotFit(
                f"mps/dra: {replicas_per_gpu} replicas of {_gib(limit)} each do not fit on one "
                f"{gpu.product} ({_gib(room)} after vLLM's start-up reserve); lower "
                "advisor.replicasPerGPU or sharing.maxReplicasPerGPU"
            )
        presented = f"an MPS client pinned to {_mib(limit)} of a {mib} {gpu.product}"
        fix = "a larger pinned limit"  # unreachable: the limit is the replica's memory
    elif provider == "devicePlugin":
        if not device_plugin_replicas or device_plugin_replicas < 1:
            raise ValueError("mps/devicePlugin needs the node's nvidia.com/gpu.replicas")
        # the daemon's set_default_device_pinned_mem_limit: total / replicas, in whole MiB
        limit = gpu.reported_memory_bytes // device_plugin_replicas // MIB * MIB
        presented = (
            f"an MPS client the device plugin pins to {_mib(limit)} ({mib} / nvidia.com/gpu.replicas "
            f"{device_plugin_replicas}) of a {gpu.product}"
        )
        fix = (
            "fewer nvidia.com/gpu.replicas in the node's device plugin sharing config, "
            "sharing.mpsProvider dra, or sharing.mode exclusive"
        )
    else:
        raise ValueError(f"no device view for mode {mode!r} with MPS provider {provider!r}")
    label = f"{mode}/{provider}" if provider else mode
    if need > limit:
        raise ReplicaDoesNotFit(
            f"{label}: one replica needs {_gib(need)} but each replica's process gets {presented}, "
            f"so vLLM would run out of memory; lower workload tokens, advisor.maxNumSeqs or "
            f"model.maxModelLen, or use {fix}"
        )
    room = limit - STARTUP_CHECK_MARGIN_BYTES
    if room < math.ceil(total * MIN_UTILIZATION):
        raise ReplicaDoesNotFit(
            f"{label}: {presented} leaves nothing free once a CUDA context exists; use {fix}"
        )
    utilization = gpu_memory_utilization_for(min(need, room), total)
    return ReplicaMemory(
        total_bytes=total,
        limit_bytes=limit,
        gpu_memory_utilization=utilization,
        mps_pinned_memory_bytes=pinned,
        presented=presented,
    )


def _gib(size: int) -> str:
    return f"{size / GIB:.1f} GiB"


def _mib(size: int) -> str:
    return f"{math.ceil(size / MIB):,} MiB"
