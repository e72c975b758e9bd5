"""GPU catalogue, keyed by the values NVIDIA GPU Feature Discovery writes into the node label
`nvidia.com/gpu.product` (e.g. ``NVIDIA-H100-80GB-HBM3``).

Figures and where they come from (../shared/FACTS.md, sections 4 and 6, unless noted):
- ``memory_bytes``: the capacity in the product's name. HBM and GDDR sizes are binary gigabytes,
  so "80GB" is 80 GiB. Only for words and for the paper's "memory freed" fraction (64 GiB for its
  H100 64 GB; see ``advisor/packing.py``): no share or fit is computed from it, since no process
  ever sees that figure.
- ``reported_memory_mib``: the total NVML (nvidia-smi) reports, which is also what GFD puts in the
  ``nvidia.com/gpu.memory`` label and what the device plugin's MPS daemon divides among its
  clients. Every share and fit starts from it: the node's label when the operator can read one
  (``GPU.with_reported_memory``), this catalogue figure otherwise. Values for H200, H100 80GB,
  A100 80/40GB, A10(G), L40S and L4 are the NVML figures published by Modal
  (https://thundergolfer.com/blog/nvidia-gpu-memory-capacity); the paper's H100 64 GB reports
  65,247 MiB (paper-data README). H100 NVL and B200 are the values nvidia-smi is commonly seen to
  print and are marked unconfirmed.
- ``usable_memory_bytes``: what a CUDA process sees as the device total (``cudaMemGetInfo``), which
  is what vLLM's ``--gpu-memory-utilization`` is a fraction of (FACTS 1.1). It is a little below
  the NVML total (so planning divides the utilisation by the NVML total, the most it can be: see
  render/planning.py replica_memory) because the driver keeps some memory; the paper's vLLM saw
  63.43 GiB of 65,247 MiB.
  Where it was not measured we take ``CUDA_VISIBLE_FRACTION`` of the NVML total, which is below
  every device total PyTorch has been seen to report for these GPUs (conservative).
- bandwidth and FP16 dense tensor TFLOPS: FACTS 6 (datasheets).
- MIG profiles: FACTS 4.1 (names and instance counts from the GPU Operator's MIG-manager config;
  slice fractions from the 7-compute / 8-memory slice model).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

GIB = 1 << 30
MIB = 1 << 20

# NVIDIA MPS's client limit (48 per GPU on compute capability >= 7.5; FACTS 3.1) is defined where
# the API bounds sharing.maxReplicasPerGPU by it. Every GPU here is >= 8.0.

# Fraction of the NVML-reported total a CUDA process sees as the device total, when not measured.
CUDA_VISIBLE_FRACTION = 0.98

# The usable memory of a MIG slice as a fraction of the figure in its name: an A100 40GB "1g.5gb"
# reports 4,864 MiB = 0.95 x 5 GiB. Applied to every profile (conservative for the large ones).
MIG_USABLE_FRACTION = 0.95

# The A100/H100-class slice model: 7 compute slices and 8 memory slices per GPU (FACTS 4.1).
COMPUTE_SLICES_PER_GPU = 7
MEMORY_SLICES_PER_GPU = 8


class UnknownGPUError(ValueError):
    """The product is not in the catalogue; the message lists the products that are."""


@dataclass(frozen=True)
class MIGProfile:
    """One MIG GPU-instance profile, e.g. ``1g.10gb``: 1 of 7 compute slices, 1 of 8 memory slices."""

    name: str
    memory_bytes: int  # usable memory of one instance (see MIG_USABLE_FRACTION)
    compute_slices: int
    memory_slices: int
    max_instances: int  # how many instances of only this profile one GPU holds

    @property
    def resource_name(self) -> str:
        """Extended resource the device plugin advertises under the mixed strategy (FACTS 4.2)."""
        return f"nvidia.com/mig-{self.name}"

    @property
    def bandwidth_fraction(self) -> float:
        """Share of the GPU's memory bandwidth: the memory-slice fraction (implied by MIG's design,
        not quoted by NVIDIA; FACTS 6)."""
        return self.memory_slices / MEMORY_SLICES_PER_GPU

    @property
    def compute_fraction(self) -> float:
        return self.compute_slices / COMPUTE_SLICES_PER_GPU

    @property
    def nominal_bytes(self) -> int:
        """The size in the profile's name (``1g.10gb``: 10 GiB): at least the device total a
        process in the slice sees, which is what vLLM's --gpu-memory-utilization is a fraction of."""
        return int(self.name.split(".")[1].removesuffix("gb")) * GIB


@dataclass(frozen=True)
class GPU:
    """One GPU product as the operator plans with it."""

    product: str  # the nvidia.com/gpu.product label value
    description: str
    memory_bytes: int  # capacity in the product name (binary GB)
    reported_memory_mib: int  # NVML total = GFD label nvidia.com/gpu.memory
    usable_memory_bytes: int  # device total a CUDA process sees (cudaMemGetInfo)
    bandwidth_bytes_per_s: float
    fp16_dense_tflops: float
    mig_profiles: tuple[MIGProfile, ...] = ()
    unconfirmed: tuple[str, ...] = field(default=())  # figures no primary source confirmed

    @property
    def reported_memory_bytes(self) -> int:
        """The NVML total in bytes: the most a CUDA process can see as this GPU's total."""
        return self.reported_memory_mib * MIB

    @property
    def mig_capable(self) -> bool:
        return bool(self.mig_profiles)

    def mig_profile(self, name: str) -> MIGProfile:
        """The MIG profile called ``name`` (e.g. ``1g.10gb``), or a ValueError listing the valid ones."""
        for profile in self.mig_profiles:
            if profile.name == name.strip().lower():
                return profile
        if not self.mig_profiles:
            raise ValueError(f"{self.product} does not support MIG")
        valid = ", ".join(p.name for p in self.mig_profiles)
        raise ValueError(f"{self.product} has no MIG profile {name!r}; valid profiles: {valid}")

    def with_reported_memory(self, mib: int) -> GPU:
        """The same GPU with the memory a node actually reports (label ``nvidia.com/gpu.memory``),
        which beats the catalogue's typical value when the operator can read it."""
        if mib <= 0:
            raise ValueError(f"reported GPU memory must be positive, got {mib} MiB")
        if mib == self.reported_memory_mib:
            return self  # keeps a measured usable_memory_bytes
        return replace(
            self, reported_memory_mib=mib, usable_memory_bytes=int(mib * MIB * CUDA_VISIBLE_FRACTION)
        )


def _usable(reported_mib: int) -> int:
    return int(reported_mib * MIB * CUDA_VISIBLE_FRACTION)


# (name, compute slices, memory slices, max instances) of each MIG profile kind, in the order of
# FACTS 4.1; the name's size is filled in per GPU.
_MIG_SHAPES = (
    ("1g", 1, 1, 7),
    ("1g", 1, 2, 4),  # 1g with double memory (1g.10gb on A100 40GB, 1g.20gb on 80GB parts)
    ("2g", 2, 2, 3),
    ("3g", 3, 4, 2),
    ("4g", 4, 4, 1),
    ("7g", 7, 8, 1),
)


def _mig(*sizes_gb: int) -> tuple[MIGProfile, ...]:
    """MIG profiles from the size in each profile's name, in the order of _MIG_SHAPES."""
    assert len(sizes_gb) == len(_MIG_SHAPES)
    return tuple(
        MIGProfile(
            name=f"{compute_name}.{size}gb",
            memory_bytes=int(size * GIB * MIG_USABLE_FRACTION),
            compute_slices=compute,
            memory_slices=memory,
            max_instances=count,
        )
        for (compute_name, compute, memory, count), size in zip(_MIG_SHAPES, sizes_gb, strict=True)
    )


_MIG_40GB = _mig(5, 10, 10, 20, 20, 40)
_MIG_80GB = _mig(10, 20, 20, 40, 40, 80)
_MIG_94GB = _mig(12, 24, 24, 47, 47, 94)
_MIG_141GB = _mig(18, 35, 35, 71, 71, 141)
_MIG_180GB = _mig(23, 45, 45, 90, 90, 180)

TB = 1e12
GB = 1e9

_CATALOGUE: tuple[GPU, ...] = (
    GPU(
        product="NVIDIA-H100-64GB-HBM2e",
        description="NVIDIA H100 64 GB HBM2e (MareNostrum 5; the GPU of every paper measurement)",
        memory_bytes=64 * GIB,
        reported_memory_mib=65247,
        usable_memory_bytes=int(63.43 * GIB),  # vLLM's total_gpu_memory in the paper's logs
        bandwidth_bytes_per_s=1.6 * TB,
        fp16_dense_tflops=989.0,
        unconfirmed=(
            "bandwidth: estimated as 4 of the 5 HBM2e stacks of the H100 PCIe (2.0 TB/s)",
            "fp16_dense_tflops: assumed equal to the H100 SXM",
            "MIG profiles: not published for this part, so none are listed",
        ),
    ),
    GPU(
        product="NVIDIA-H100-80GB-HBM3",
        description="NVIDIA H100 SXM 80 GB HBM3",
        memory_bytes=80 * GIB,
        reported_memory_mib=81559,
        usable_memory_bytes=_usable(81559),
        bandwidth_bytes_per_s=3.35 * TB,
        fp16_dense_tflops=989.0,
        mig_profiles=_MIG_80GB,
    ),
    GPU(
        product="NVIDIA-H100-PCIe",
        description="NVIDIA H100 PCIe 80 GB HBM2e",
        memory_bytes=80 * GIB,
        reported_memory_mib=81559,
        usable_memory_bytes=_usable(81559),
        bandwidth_bytes_per_s=2.0 * TB,
        fp16_dense_tflops=756.0,
        mig_profiles=_MIG_80GB,
        unconfirmed=("reported_memory_mib: assumed equal to the H100 SXM",),
    ),
    GPU(
        product="NVIDIA-H100-NVL",
        description="NVIDIA H100 NVL 94 GB HBM3",
        memory_bytes=94 * GIB,
        reported_memory_mib=95830,
        usable_memory_bytes=_usable(95830),
        bandwidth_bytes_per_s=3.9 * TB,
        fp16_dense_tflops=835.0,
        mig_profiles=_MIG_94GB,
        unconfirmed=("reported_memory_mib", "fp16_dense_tflops"),
    ),
    GPU(
        product="NVIDIA-H200",
        description="NVIDIA H200 SXM 141 GB HBM3e",
        memory_bytes=141 * GIB,
        reported_memory_mib=143771,
        usable_memory_bytes=_usable(143771),
        bandwidth_bytes_per_s=4.8 * TB,
        fp16_dense_tflops=989.0,
        mig_profiles=_MIG_141GB,
    ),
    GPU(
        product="NVIDIA-B200",
        description="NVIDIA B200 180 GB HBM3e",
        memory_bytes=180 * GIB,
        reported_memory_mib=183359,
        usable_memory_bytes=_usable(183359),
        bandwidth_bytes_per_s=8.0 * TB,
        fp16_dense_tflops=2250.0,
        mig_profiles=_MIG_180GB,
        unconfirmed=("reported_memory_mib",),
    ),
    GPU(
        product="NVIDIA-A100-SXM4-80GB",
        description="NVIDIA A100 SXM4 80 GB HBM2e",
        memory_bytes=80 * GIB,
        reported_memory_mib=81920,
        usable_memory_bytes=_usable(81920),
        bandwidth_bytes_per_s=2039 * GB,
        fp16_dense_tflops=312.0,
        mig_profiles=_MIG_80GB,
    ),
    GPU(
        product="NVIDIA-A100-80GB-PCIe",
        description="NVIDIA A100 PCIe 80 GB HBM2e",
        memory_bytes=80 * GIB,
        reported_memory_mib=81920,
        usable_memory_bytes=_usable(81920),
        bandwidth_bytes_per_s=1935 * GB,
        fp16_dense_tflops=312.0,
        mig_profiles=_MIG_80GB,
    ),
    GPU(
        product="NVIDIA-A100-SXM4-40GB",
        description="NVIDIA A100 SXM4 40 GB HBM2",
        memory_bytes=40 * GIB,
        reported_memory_mib=40960,
        usable_memory_bytes=_usable(40960),
        bandwidth_bytes_per_s=1555 * GB,
        fp16_dense_tflops=312.0,
        mig_profiles=_MIG_40GB,
    ),
    GPU(
        product="NVIDIA-A100-PCIE-40GB",
        description="NVIDIA A100 PCIe 40 GB HBM2",
        memory_bytes=40 * GIB,
        reported_memory_mib=40960,
        usable_memory_bytes=_usable(40960),
        bandwidth_bytes_per_s=1555 * GB,
        fp16_dense_tflops=312.0,
        mig_profiles=_MIG_40GB,
    ),
    GPU(
        product="NVIDIA-L40S",
        description="NVIDIA L40S 48 GB GDDR6",
        memory_bytes=48 * GIB,
        reported_memory_mib=46068,
        usable_memory_bytes=_usable(46068),
        bandwidth_bytes_per_s=864 * GB,
        fp16_dense_tflops=362.0,
    ),
    GPU(
        product="NVIDIA-L4",
        description="NVIDIA L4 24 GB GDDR6",
        memory_bytes=24 * GIB,
        reported_memory_mib=23034,
        usable_memory_bytes=_usable(23034),
        bandwidth_bytes_per_s=300 * GB,
        fp16_dense_tflops=121.0,
    ),
    GPU(
        product="NVIDIA-A10G",
        description="NVIDIA A10G 24 GB GDDR6 (AWS G5)",
        memory_bytes=24 * GIB,
        reported_memory_mib=23028,
        usable_memory_bytes=_usable(23028),
        bandwidth_bytes_per_s=600 * GB,
        fp16_dense_tflops=70.0,
        unconfirmed=("fp16_dense_tflops", "reported_memory_mib: the A10's value"),
    ),
)

GPUS: dict[str, GPU] = {gpu.product: gpu for gpu in _CATALOGUE}

SHARED_SUFFIX = "-SHARED"  # added by the device plugin when it shares a GPU (MPS, time-slicing)
_MIG_SUFFIX = re.compile(r"-MIG-(?P<profile>[1-7]g\.[0-9]+gb(?:\.me)?)$", re.IGNORECASE)


def _normalise(product: str) -> str:
    # nvidia-smi prints "NVIDIA H100 80GB HBM3"; GFD replaces the spaces with dashes.
    return re.sub(r"[\s_]+", "-", product.strip()).upper()


_BY_NORMALISED = {_normalise(product): gpu for product, gpu in GPUS.items()}


def known_products() -> list[str]:
    return sorted(GPUS)


@dataclass(frozen=True)
class ProductLabel:
    """What a `nvidia.com/gpu.product` value says: the GPU, whether the device plugin shares it
    (suffix ``-SHARED``), and the MIG profile under the single strategy (``...-MIG-1g.10gb``)."""

    gpu: GPU
    shared: bool = False
    mig_profile: MIGProfile | None = None


def parse_gpu_product(label: str) -> ProductLabel:
    """Parse a `nvidia.com/gpu.product` value. Raises UnknownGPUError for products not catalogued."""
    if not isinstance(label, str) or not label.strip():
        raise UnknownGPUError(f"GPU product must be a non-empty string; known products: {_known()}")
    text = _normalise(label)
    shared = text.endswith(SHARED_SUFFIX)
    if shared:
        text = text[: -len(SHARED_SUFFIX)]
    mig_name = None
    match = _MIG_SUFFIX.search(text)
    if match:
        mig_name = match.group("profile").lower()
        text = text[: match.start()]
    gpu = _BY_NORMALISED.get(text)
    if gpu is None:
        raise UnknownGPUError(
            f"unknown GPU product {label.strip()!r}: use one of {_known()} "
            "(the value of the node label nvidia.com/gpu.product)"
        )
    mig = None
    if mig_name is not None:
        try:
            mig = gpu.mig_profile(mig_name)
        except ValueError as err:
            raise UnknownGPUError(f"GPU product {label.strip()!r}: {err}") from None
    return ProductLabel(gpu=gpu, shared=shared, mig_profile=mig)


def lookup_gpu(product: str) -> GPU:
    """The catalogue entry for a `nvidia.com/gpu.product` value. Accepts the `-SHARED` suffix the
    device plugin adds under MPS sharing, the `-MIG-<profile>` suffix of the single MIG strategy,
    nvidia-smi's spelling with spaces, and any letter case."""
    return parse_gpu_product(product).gpu


def _known() -> str:
    return ", ".join(known_products())
