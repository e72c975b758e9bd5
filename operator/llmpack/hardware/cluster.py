"""What the cluster offers for a GPU product, read from node labels, capacity and DeviceClasses.

Pure: the controller keeps the raw Node and DeviceClass objects from its watches and asks this
module which sharing modes can run where. Labels are the ones NVIDIA GPU Feature Discovery and the
device plugin set (FACTS.md 3.2, 4.3).

Two label values the memory plan rests on:
- `nvidia.com/gpu.memory`: the GPU's total memory as NVML reports it, in MiB (81,559 on an H100
  80GB HBM3, not the 81,920 its name suggests). It is what the device plugin's MPS daemon divides
  among clients, so every share and fit uses it; the catalogue's reported total is the fallback
  for nodes without the label.
- `nvidia.com/gpu.replicas`: the sharing config's `replicas`, i.e. clients per physical GPU.
  Decision, from the device plugin's own labeler (internal/lm/resource.go, replicasLabel: the
  label is the config's Replicas, 1 when not shared, 0 when sharing is off) and the MPS daemon
  (set_default_device_pinned_mem_limit <gpu> <total/replicas>): the label is per GPU. It is the
  capacity `nvidia.com/gpu` that counts GPUs x replicas (FACTS 3.2's "GPU count x replicas"
  describes that resource count, not the label), so the physical GPUs of a node are capacity /
  replicas, and each client is capped at memory / replicas. The testbed's fake MPS node follows
  the same shape (replicas "4", nvidia.com/gpu = GPUs x 4). Reading the label as GPUs x replicas
  instead would credit each client with several clients' memory: every replica would fail at start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmpack.hardware.sharing import MIG, Exclusive, MPSThroughDevicePlugin, MPSThroughDRA

# Labels and resources of NVIDIA GPU Feature Discovery and the device plugin (FACTS.md 3.2, 4.3).
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
SHARING_STRATEGY_LABEL = "nvidia.com/gpu.sharing-strategy"
GPU_RESOURCE = "nvidia.com/gpu"
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"
GPU_REPLICAS_LABEL = "nvidia.com/gpu.replicas"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # MiB, as NVML reports the total (GFD)
SHARED_SUFFIX = "-SHARED"
MPS_SHARING_STRATEGY = "mps"  # the value of SHARING_STRATEGY_LABEL on nodes the device plugin shares with MPS
DRA_GPU_DEVICE_CLASS = "gpu.nvidia.com"
DRA_GPU_DRIVER = "gpu.nvidia.com"  # the NVIDIA DRA driver's name in ResourceSlices


def dra_whole_gpus(resource_slice: dict[str, Any]) -> tuple[str | None, int]:
    """(node, whole GPUs) that one ResourceSlice publishes: devices of the NVIDIA DRA driver whose
    `type` attribute is gpu. MIG devices (type mig) and other drivers' devices are not whole GPUs."""
    spec = resource_slice.get("spec") or {}
    if spec.get("driver") != DRA_GPU_DRIVER or not spec.get("nodeName"):
        return None, 0
    gpus = sum(
        1
        for device in spec.get("devices") or []
        if ((device.get("attributes") or {}).get("type") or {}).get("string", "gpu") == "gpu"
    )
    return spec["nodeName"], gpus


@dataclass(frozen=True)
class NodeFacts:
    name: str
    labels: dict[str, str]
    allocatable: dict[str, str]
    schedulable: bool = True

    @classmethod
    def from_node(cls, node: dict[str, Any]) -> NodeFacts:
        meta = node.get("metadata", {})
        return cls(
            name=meta.get("name", ""),
            labels=dict(meta.get("labels") or {}),
            allocatable=dict((node.get("status") or {}).get("allocatable") or {}),
            schedulable=not (node.get("spec") or {}).get("unschedulable", False),
        )

    def quantity(self, resource: str) -> int:
        try:
            return int(self.allocatable.get(resource, "0"))
        except ValueError:
            return 0


@dataclass
class Offers:
    """Capacity for one product, per sharing mode."""

    product: str
    exclusive_gpus: int = 0
    # the most whole GPUs (nvidia.com/gpu) one node offers: a replica spanning several GPUs
    # (tensor or pipeline parallelism) needs them on one node
    most_gpus_on_a_node: int = 0
    mps_dra_nodes: list[str] = field(default_factory=list)
    mps_dra_gpus: int = 0
    # clients per GPU the device plugin slices into; with several such nodes the most (the
    # smallest cap), since a replica's pod may land on any of them
    device_plugin_mps_replicas: int | None = None
    device_plugin_mps_gpus: int = 0
    mig_slices: dict[str, int] = field(default_factory=dict)  # profile -> allocatable slices
    # nvidia.com/gpu.memory (MiB) of the nodes offering whole or MPS-shared GPUs: the smallest,
    # since a replica may land on any of them. None: no node says; use the catalogue's figure.
    gpu_memory_mib: int | None = None

    def record_gpu_memory(self, node: NodeFacts) -> None:
        mib = _int(node.labels.get(GPU_MEMORY_LABEL))
        if mib > 0:
            self.gpu_memory_mib = mib if self.gpu_memory_mib is None else min(self.gpu_memory_mib, mib)

    @property
    def modes(self) -> list[str]:
        offered = [
            (Exclusive(), self.exclusive_gpus),
            (MPSThroughDRA(), self.mps_dra_gpus),
            (MPSThroughDevicePlugin(self.device_plugin_mps_replicas or 1), self.device_plugin_mps_gpus),
        ]
        labels = [sharing.label for sharing, count in offered if count]
        return labels + ([MIG.mode] if self.mig_slices else [])

    def describe(self) -> str:
        return ", ".join(self.modes) or "nothing"


@dataclass
class ClusterFacts:
    nodes: dict[str, NodeFacts] = field(default_factory=dict)
    device_classes: set[str] = field(default_factory=set)
    # node name -> whole GPUs published by the DRA driver, summed over its ResourceSlices
    dra_devices: dict[str, int] = field(default_factory=dict)
    dra_slices: dict[str, tuple[str, int]] = field(default_factory=dict)  # slice -> (node, GPUs)

    @classmethod
    def from_objects(cls, objects: list[dict[str, Any]]) -> ClusterFacts:
        """The facts of Node, DeviceClass and ResourceSlice objects as the API server returns them
        (`kubectl get nodes,deviceclasses,resourceslices -o yaml` prints them as a v1 List);
        objects of other kinds are ignored."""
        facts = cls()
        for obj in objects:
            kind, name = obj.get("kind"), (obj.get("metadata") or {}).get("name", "")
            if kind == "Node":
                facts.nodes[name] = NodeFacts.from_node(obj)
            elif kind == "DeviceClass":
                facts.device_classes.add(name)
            elif kind == "ResourceSlice":
                facts.publish_slice(name, obj)
        return facts

    def publish_slice(self, name: str, resource_slice: dict[str, Any] | None) -> bool:
        """Record a ResourceSlice (None: deleted); True if a node's DRA GPU count changed."""
        node, gpus = dra_whole_gpus(resource_slice) if resource_slice is not None else (None, 0)
        if node and gpus:
            self.dra_slices[name] = (node, gpus)
        else:
            self.dra_slices.pop(name, None)
        totals: dict[str, int] = {}
        for slice_node, count in self.dra_slices.values():
            totals[slice_node] = totals.get(slice_node, 0) + count
        changed = totals != self.dra_devices
        self.dra_devices = totals
        return changed

    def offers(self, product: str, node_selector: dict[str, str] | None = None) -> Offers:
        """What schedulable nodes labelled with `product` offer; with `node_selector` (the spec's
        gpu.nodeSelector), only the nodes whose labels match it, as the scheduler would."""
        offers = Offers(product=product)
        wanted = (node_selector or {}).items()
        for node in list(self.nodes.values()):  # a snapshot: watch handlers add nodes meanwhile
            if not node.schedulable or not wanted <= node.labels.items():
                continue
            label = node.labels.get(GPU_PRODUCT_LABEL, "")
            shared = node.labels.get(SHARING_STRATEGY_LABEL) == MPS_SHARING_STRATEGY
            if shared and label == product + SHARED_SUFFIX:
                replicas = max(_int(node.labels.get(GPU_REPLICAS_LABEL)), 1)  # per GPU (see above)
                offers.device_plugin_mps_replicas = max(offers.device_plugin_mps_replicas or 1, replicas)
                offers.device_plugin_mps_gpus += node.quantity(GPU_RESOURCE) // replicas
                offers.record_gpu_memory(node)
                continue
            if label != product:
                continue
            if not shared and node.quantity(GPU_RESOURCE):
                offers.exclusive_gpus += node.quantity(GPU_RESOURCE)
                offers.most_gpus_on_a_node = max(offers.most_gpus_on_a_node, node.quantity(GPU_RESOURCE))
                offers.record_gpu_memory(node)
            for resource, value in node.allocatable.items():
                if resource.startswith(MIG_RESOURCE_PREFIX) and _int(value):
                    profile = resource.removeprefix(MIG_RESOURCE_PREFIX)
                    offers.mig_slices[profile] = offers.mig_slices.get(profile, 0) + _int(value)
            if DRA_GPU_DEVICE_CLASS in self.device_classes and self.dra_devices.get(node.name):
                offers.mps_dra_nodes.append(node.name)
                offers.mps_dra_gpus += self.dra_devices[node.name]
                offers.record_gpu_memory(node)
        return offers


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0
