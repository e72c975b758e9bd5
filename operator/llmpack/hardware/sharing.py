"""The sharing modes: one type per way vLLM replicas hold a GPU, and everything that differs
between them. No other module compares a mode's name; they ask the type.

    Exclusive             one replica per pod per whole GPU (nvidia.com/gpu: 1): the baseline
    MPSThroughDRA         one pod per GPU whose containers (one per replica) share one DRA
                          ResourceClaim configured for MPS; llmpack pins each client's memory
    MPSThroughDevicePlugin one pod per replica on nodes whose device plugin shares every GPU with
                          MPS in equal slices (total / nvidia.com/gpu.replicas per client)
    MIG                   one pod per replica, each on one MIG slice of a profile

What each type holds:
- `device`: what one replica's vLLM process sees as its device (the total cudaMemGetInfo reports,
  the most it may hold, the MPS limit llmpack sets), the input of --gpu-memory-utilization
  (advisor/replica_memory.py);
- `pods_per_gpu`: serving pods one GPU carries (what the HPA counts and status.gpus divides by);
- `replicas_serving`: how many vLLM replicas serve, from the pods the watch sees;
- `requested_by`: whether a spec's sharing.mode / sharing.mpsProvider admits the mode;
- `label`: the mode as `kubectl get llmd` and the explanations name it.

Sources: FACTS.md 3 (MPS: the DRA driver's per-claim pinned limit, the device plugin's equal
split), 4 (MIG resource names). Pure data and arithmetic: no Kubernetes client.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from llmpack.api.llmdeployment import MPSProvider
from llmpack.hardware.gpus import GPU, MIGProfile

ServingMode = Literal["exclusive", "mps", "mig"]
MIB = 1 << 20
GIB = 1 << 30


@dataclass(frozen=True)
class Device:
    """What one replica's process sees: `total_bytes` the most cudaMemGetInfo can report as the
    device's total, `limit_bytes` the most the process may hold, `pinned_bytes` the MPS limit
    llmpack itself sets (None where it sets none), `presented` that in words, `fix` what a user
    changes when a replica does not fit."""

    total_bytes: int
    limit_bytes: int
    pinned_bytes: int | None
    presented: str
    fix: str


class DoesNotFit(ValueError):
    """The mode cannot hold the replicas asked for; the message names what to change."""


@dataclass(frozen=True)
class Sharing(ABC):
    """One sharing mode (see the module docstring)."""

    mode: ClassVar[ServingMode]
    provider: ClassVar[MPSProvider | None] = None
    # llmpack sets each client's MPS memory limit (the DRA claim's config); else the mode does
    pinned_by_llmpack: ClassVar[bool] = False
    # nvidia.com/gpu slices one replica's pod asks for, where the device plugin shares by slices
    gpu_slices_per_replica: ClassVar[int | None] = None
    # the mode renders a ResourceClaimTemplate for its pods
    uses_claim_template: ClassVar[bool] = False
    # a pod runs several replicas, each on its own port, behind a router on the service port
    replicas_behind_router: ClassVar[bool] = False
    # pods of different namespaces may run on one GPU as clients of one MPS server (one UID, no
    # memory-fault isolation, each other's timing visible: FACTS.md 3.1)
    colocates_namespaces: ClassVar[bool] = False

    @property
    def label(self) -> str:
        return f"{self.mode}/{self.provider}" if self.provider else self.mode

    @property
    def mig(self) -> MIGProfile | None:
        """The MIG slice each replica holds (None: the mode gives no slice)."""
        return None

    @abstractmethod
    def device(
        self, gpu: GPU, *, need_bytes: int, replicas_per_gpu: int, floor_bytes: int, reserve_bytes: int
    ) -> Device:
        """What a replica needing `need_bytes` sees when `replicas_per_gpu` share one `gpu`;
        `floor_bytes`: the least a process must hold to pass vLLM's start-up check (a CUDA
        context and the smallest utilisation); `reserve_bytes`: what the replica being started
        needs free beside the others (its CUDA context and slack). Raises DoesNotFit where
        the mode itself cannot hold that many replicas (only where llmpack sets the limits)."""

    @classmethod
    def pods_per_gpu(cls, replicas_per_gpu: int) -> int:
        """Serving pods on one GPU: one per replica, unless the mode packs replicas in one pod."""
        return replicas_per_gpu

    @classmethod
    def replicas_serving(cls, ready_pods: int, pods: Iterable[dict[str, Any]]) -> int:
        """vLLM replicas that serve: one per ready pod, unless a pod holds several replicas."""
        return ready_pods

    @classmethod
    @abstractmethod
    def requested_by(cls, mode: str, provider: str | None) -> bool:
        """Whether a spec's sharing.mode (and sharing.mpsProvider) admits this mode."""


@dataclass(frozen=True)
class Exclusive(Sharing):
    mode: ClassVar[ServingMode] = "exclusive"

    def device(
        self, gpu: GPU, *, need_bytes: int, replicas_per_gpu: int, floor_bytes: int, reserve_bytes: int
    ) -> Device:
        limit = gpu.usable_memory_bytes
        return Device(
            total_bytes=gpu.reported_memory_bytes,
            limit_bytes=limit,
            pinned_bytes=None,
            presented=f"a whole {gpu.product} ({gpu.reported_memory_mib:,} MiB, {_gib(limit)} usable)",
            fix="a GPU with more memory",
        )

    @classmethod
    def requested_by(cls, mode: str, provider: str | None) -> bool:
        return mode in ("auto", "exclusive")


@dataclass(frozen=True)
class MPSThroughDRA(Sharing):
    """One pod per GPU; its ResourceClaim's MPS config pins every client to the replica's memory,
    which llmpack sets (never below what the start-up check needs)."""

    mode: ClassVar[ServingMode] = "mps"
    provider: ClassVar[MPSProvider | None] = "dra"
    pinned_by_llmpack: ClassVar[bool] = True
    uses_claim_template: ClassVar[bool] = True
    replicas_behind_router: ClassVar[bool] = True

    def device(
        self, gpu: GPU, *, need_bytes: int, replicas_per_gpu: int, floor_bytes: int, reserve_bytes: int
    ) -> Device:
        limit = max(need_bytes, floor_bytes)
        room = gpu.usable_memory_bytes - reserve_bytes
        if replicas_per_gpu * limit > room:
            raise DoesNotFit(
                f"{self.label}: {replicas_per_gpu} replicas of {_gib(limit)} each do not fit on one "
                f"{gpu.product} ({_gib(room)} after vLLM's start-up reserve); lower "
                "advisor.replicasPerGPU or sharing.maxReplicasPerGPU"
            )
        return Device(
            total_bytes=gpu.reported_memory_bytes,
            limit_bytes=limit,
            pinned_bytes=limit,
            presented=(
                f"an MPS client pinned to {_mib(limit)} of a {gpu.reported_memory_mib:,} MiB {gpu.product}"
            ),
            fix="a larger pinned limit",  # unreachable: the limit is the replica's memory
        )

    @classmethod
    def pods_per_gpu(cls, replicas_per_gpu: int) -> int:
        return 1

    @classmethod
    def replicas_serving(cls, ready_pods: int, pods: Iterable[dict[str, Any]]) -> int:
        """The pod stays ready while any of its replicas serves (its router sends only to those):
        the ready replica containers (native sidecars vllm-0, vllm-1 ...) of the ready pods."""
        if not ready_pods:
            return 0
        serving = 0
        for pod in pods:
            status = pod.get("status") or {}
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
            )
            if not ready or pod["metadata"].get("deletionTimestamp"):
                continue
            containers = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
            serving += sum(1 for c in containers if c.get("name", "").startswith("vllm") and c.get("ready"))
        return serving

    @classmethod
    def requested_by(cls, mode: str, provider: str | None) -> bool:
        return mode == "auto" or (mode == "mps" and provider == cls.provider)


@dataclass(frozen=True)
class MPSThroughDevicePlugin(Sharing):
    """`node_replicas`: the node's nvidia.com/gpu.replicas; the plugin's MPS daemon pins every
    client to total / replicas (set_default_device_pinned_mem_limit, whole MiB), whatever llmpack
    packs."""

    node_replicas: int
    mode: ClassVar[ServingMode] = "mps"
    provider: ClassVar[MPSProvider | None] = "devicePlugin"
    gpu_slices_per_replica: ClassVar[int | None] = 1
    # the plugin hands a GPU's slices to any pod that asks, whatever its namespace
    colocates_namespaces: ClassVar[bool] = True

    def device(
        self, gpu: GPU, *, need_bytes: int, replicas_per_gpu: int, floor_bytes: int, reserve_bytes: int
    ) -> Device:
        if self.node_replicas < 1:
            raise ValueError("mps/devicePlugin needs the node's nvidia.com/gpu.replicas")
        limit = gpu.reported_memory_bytes // self.node_replicas // MIB * MIB
        mib = f"{gpu.reported_memory_mib:,} MiB"
        return Device(
            total_bytes=gpu.reported_memory_bytes,
            limit_bytes=limit,
            pinned_bytes=None,
            presented=(
                f"an MPS client the device plugin pins to {_mib(limit)} ({mib} / nvidia.com/gpu.replicas "
                f"{self.node_replicas}) of a {gpu.product}"
            ),
            fix=(
                "fewer nvidia.com/gpu.replicas in the node's device plugin sharing config, "
                "sharing.mpsProvider dra, or sharing.mode exclusive"
            ),
        )

    @classmethod
    def requested_by(cls, mode: str, provider: str | None) -> bool:
        return mode == "auto" or (mode == "mps" and provider == cls.provider)


@dataclass(frozen=True)
class MIG(Sharing):
    """One replica per slice of `profile`; the slice is the device (its total is the size in its
    name, FACTS.md 4)."""

    profile: MIGProfile
    mode: ClassVar[ServingMode] = "mig"

    @property
    def mig(self) -> MIGProfile | None:
        return self.profile

    def device(
        self, gpu: GPU, *, need_bytes: int, replicas_per_gpu: int, floor_bytes: int, reserve_bytes: int
    ) -> Device:
        limit = self.profile.memory_bytes
        return Device(
            total_bytes=self.profile.nominal_bytes,
            limit_bytes=limit,
            pinned_bytes=None,
            presented=f"a {self.profile.name} MIG slice ({_gib(limit)} usable)",
            fix="a larger sharing.migProfile",
        )

    @classmethod
    def requested_by(cls, mode: str, provider: str | None) -> bool:
        return mode in ("auto", "mig")


def sharing_type(mode: str, provider: str | None = None) -> type[Sharing]:
    """The type of a mode named in a plan or a status (mode, mpsProvider). Raises ValueError for
    a combination no type holds."""
    for kind in (Exclusive, MPSThroughDRA, MPSThroughDevicePlugin, MIG):
        if kind.mode == mode and (kind.provider is None or kind.provider == provider):
            return kind
    raise ValueError(f"no sharing mode {mode!r} with MPS provider {provider!r}")


def _gib(size: int) -> str:
    return f"{size / GIB:.1f} GiB"


def _mib(size: int) -> str:
    return f"{-(-size // MIB):,} MiB"
