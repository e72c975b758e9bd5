"""The `GPUPool` custom resource (group llmpack.io, version v1alpha1, short name gpool).

A GPUPool is a set of GPUs of one product in one namespace that several LLMDeployments of that
namespace share: each member names the pool in `spec.gpuPoolRef`, keeps its own spec, profile,
Service, status, scale subresource and autoscaler, and the pool decides on which of its GPUs each
member's replicas run (planner/pool.py). Members of different models share a GPU through one DRA
ResourceClaim per pool GPU configured for MPS.

Three ways to share, one per `spec.sharing`:
- `mps` with `dra` (the default): llmpack places every replica on a pool GPU and makes one
  ResourceClaim per GPU, which the pods placed there share.
- `mps` with `devicePlugin`: the NVIDIA device plugin splits every GPU of the nodes into equal
  slices and the scheduler hands them out; the pool finds the split (nvidia.com/gpu.replicas) that
  needs the fewest GPUs and says so in its status, and plans the members on it.
- `mig`: each replica runs on a MIG slice of its own size; the pool lays the slices out on GPUs
  and says which MIG configuration the nodes need (the GPU Operator's mig-manager config).

Limits: with `devicePlugin` and `mig` the node configuration is the cluster admin's to apply, and
the scheduler, not llmpack, picks the slice a pod lands on (the placement in the status is the
plan). A pool and its members live in one namespace (a ResourceClaim cannot be referenced across
namespaces).
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import ConfigDict, Field

from llmpack.api.llmdeployment import (
    MAX_GPUS,
    MPS_MAX_CLIENTS,
    CamelModel,
    Condition,
    LabelValue,
    PositiveInt,
    Toleration,
)

KIND: Final = "GPUPool"
PLURAL = "gpupools"
SINGULAR = "gpupool"
SHORT_NAMES = ["gpool"]

PoolPhase = Literal["Pending", "Ready", "Degraded"]


class PoolGPUSpec(CamelModel):
    """Which GPUs the pool may use."""

    product: LabelValue = Field(
        "NVIDIA-H100-80GB-HBM3",
        min_length=1,
        description="GPU product as in the node label nvidia.com/gpu.product; every member is "
        "profiled and served on it.",
    )
    max_gpus: PositiveInt = Field(
        description="Most GPUs the pool may use; a member that does not fit on them is refused "
        "(with the reason in its status) while the others keep serving.",
        le=MAX_GPUS,
    )
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict, max_length=64, description="Extra node labels the members' pods require."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=64, description="Tolerations for the members' pods."
    )


class PoolSharingSpec(CamelModel):
    """How the pool's GPUs are shared (see the module docstring of api/gpupool.py)."""

    mode: Literal["mps", "mig"] = Field(
        "mps", description="mps: replicas of every member are MPS clients. mig: each on a MIG slice."
    )
    mps_provider: Literal["dra", "devicePlugin"] = Field(
        "dra",
        description="dra: one ResourceClaim per pool GPU, shared by the pods placed on it. devicePlugin: "
        "the device plugin's equal MPS slices; the pool recommends how many per GPU.",
    )
    max_replicas_per_gpu: PositiveInt = Field(
        16,
        le=MPS_MAX_CLIENTS,
        description="Most vLLM replicas (MPS clients) on one GPU, all members together.",
    )


class GPUPoolSpec(CamelModel):
    gpu: PoolGPUSpec = Field(description="The pool's GPUs.")
    sharing: PoolSharingSpec = Field(default_factory=PoolSharingSpec, description="How they are shared.")
    rebalance: str | None = Field(
        None,
        max_length=63,
        description="Change this value (e.g. to the date) to place every member again from scratch, "
        "which restarts pods. Otherwise placement is stable: a change to one member never moves "
        "another member's running replicas.",
    )


class PoolGPUMember(CamelModel):
    """One member's replicas on one pool GPU, with what the performance model predicts for them."""

    name: str = Field(description="The member LLMDeployment.")
    replicas: int = Field(description="Its vLLM replicas on this GPU.")
    memory_bytes: int = Field(description="Their MPS memory limits together, in bytes.")
    predicted_itl_mean_ms: float | None = Field(None, description="Predicted mean ITL of these replicas.")
    predicted_tokens_per_s: float | None = Field(None, description="Predicted tokens/s of these replicas.")
    mig_profile: str | None = Field(None, description="mode mig: the MIG profile of each replica's slice.")


class PoolGPU(CamelModel):
    """One GPU of the pool: its ResourceClaim and who runs on it."""

    index: int = Field(description="The GPU's index in the pool (stable while it is in use).")
    claim: str | None = Field(None, description="mps/dra: the ResourceClaim the pods on this GPU share.")
    pinned_memory_bytes: int = Field(
        0, description="mps/dra: the claim's default MPS pinned memory limit (the largest cap when made)."
    )
    memory_bytes: int = Field(description="Memory its replicas' caps take together, in bytes.")
    members: list[PoolGPUMember] = Field(default_factory=list, description="Members on this GPU.")
    mig_devices: dict[str, int] | None = Field(
        None, description="mode mig: the MIG slices this GPU is split into (profile -> count)."
    )


class PoolMemberStatus(CamelModel):
    """One member as the pool sees it."""

    name: str = Field(description="The member LLMDeployment.")
    replicas: int = Field(description="Replicas it wants: gpu.count x its own replicas per GPU.")
    placed: int = Field(description="Replicas the pool placed.")
    revision: str = Field(description="Hash of what sizes one replica; a change places the member again.")
    state: Literal["Placed", "Short", "Waiting"] = Field(
        "Waiting",
        description="Placed: all its replicas are. Short: some or none are (message says why). "
        "Waiting: not sized yet (profiling, advising, refused), so not placed.",
    )
    message: str = Field("", description="Why replicas are missing, if they are.")


class GPUPoolStatus(CamelModel):
    model_config = ConfigDict(extra="ignore")

    phase: PoolPhase = Field("Pending", description="Pending, Ready (every member placed) or Degraded.")
    message: str = Field("", description="A one-line summary.")
    observed_generation: int | None = Field(None, description="The spec generation last placed.")
    conditions: list[Condition] = Field(default_factory=list, description="Standard conditions.")
    gpus_used: int | None = Field(None, description="GPUs that carry replicas.")
    memory_bound: int | None = Field(
        None, description="The placed replicas' memory over one GPU's, rounded up: no placement needs fewer."
    )
    placement: str | None = Field(None, description="Per GPU, its members and memory, in one line.")
    gpus: list[PoolGPU] = Field(default_factory=list, description="Per GPU, its claim and members.")
    members: list[PoolMemberStatus] = Field(default_factory=list, description="Per member, what was placed.")
    rebalanced: str | None = Field(None, description="The spec.rebalance value last acted on.")
    node_configuration: str | None = Field(
        None,
        description="devicePlugin and mig: what the pool's nodes must be configured with for this "
        "placement (the cluster admin applies it).",
    )
    device_plugin_replicas: int | None = Field(
        None, description="devicePlugin: the MPS slices per GPU (nvidia.com/gpu.replicas) the pool needs."
    )
    mig_config: str | None = Field(
        None, description="mig: the nvidia.com/mig.config node label value the layout needs."
    )
    mig_parted: str | None = Field(
        None, description="mig: the mig-parted config (YAML) defining mig_config, where no stock one does."
    )
    basis: str = Field(
        "",
        description="What the predictions rest on: mixed co-location of different models is predicted "
        "by the performance model without any measurement of it.",
    )


class GPUPool(CamelModel):
    """GPUs of one product shared by several LLMDeployments of one namespace, each member placed
    from its own profile."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["llmpack.io/v1alpha1"] = "llmpack.io/v1alpha1"
    kind: Literal["GPUPool"] = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: GPUPoolSpec
    status: GPUPoolStatus | None = None


__all__ = [
    "KIND",
    "PLURAL",
    "SHORT_NAMES",
    "SINGULAR",
    "GPUPool",
    "GPUPoolSpec",
    "GPUPoolStatus",
    "PoolGPU",
    "PoolGPUMember",
    "PoolGPUSpec",
    "PoolMemberStatus",
    "PoolSharingSpec",
]
