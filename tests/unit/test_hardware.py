"""The GPU catalogue: lookup by the GFD product label, figures from FACTS.md 4 and 6, MIG profiles."""

from __future__ import annotations

import pytest

from llmpack.hardware import (
    GPUS,
    MPS_MAX_CLIENTS,
    UnknownGPUError,
    known_products,
    lookup_gpu,
    parse_gpu_product,
)

GIB = 1 << 30

REQUIRED_PRODUCTS = [
    "NVIDIA-H100-80GB-HBM3",
    "NVIDIA-A100-SXM4-80GB",
    "NVIDIA-A100-SXM4-40GB",
    "NVIDIA-H100-PCIe",
    "NVIDIA-H100-NVL",
    "NVIDIA-H200",
    "NVIDIA-B200",
    "NVIDIA-L4",
    "NVIDIA-L40S",
    "NVIDIA-A10G",
    "NVIDIA-H100-64GB-HBM2e",
]


@pytest.mark.parametrize("product", REQUIRED_PRODUCTS)
def test_every_required_product_is_catalogued(product):
    gpu = lookup_gpu(product)
    assert gpu.product == product
    assert 0 < gpu.usable_memory_bytes < gpu.reported_memory_mib * (1 << 20) <= gpu.memory_bytes * 1.0
    assert gpu.bandwidth_bytes_per_s > 0 and gpu.fp16_dense_tflops > 0


@pytest.mark.parametrize(
    "label",
    [
        "NVIDIA-H100-80GB-HBM3-SHARED",  # device plugin MPS sharing
        "nvidia-h100-80gb-hbm3",
        "NVIDIA H100 80GB HBM3",  # nvidia-smi's spelling
        "  NVIDIA-H100-80GB-HBM3  ",
    ],
)
def test_lookup_accepts_label_variants(label):
    assert lookup_gpu(label).product == "NVIDIA-H100-80GB-HBM3"


def test_shared_suffix_is_reported():
    parsed = parse_gpu_product("NVIDIA-A100-SXM4-80GB-SHARED")
    assert parsed.shared and parsed.gpu.product == "NVIDIA-A100-SXM4-80GB" and parsed.mig_profile is None


def test_single_strategy_mig_label_names_gpu_and_profile():
    parsed = parse_gpu_product("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb")
    assert parsed.gpu.product == "NVIDIA-A100-SXM4-40GB"
    assert parsed.mig_profile is not None and parsed.mig_profile.name == "1g.5gb"


def test_unknown_product_lists_known_ones():
    with pytest.raises(UnknownGPUError) as err:
        lookup_gpu("Tesla-T4")
    message = str(err.value)
    assert "Tesla-T4" in message
    for product in REQUIRED_PRODUCTS:
        assert product in message
    assert known_products() == sorted(GPUS)


def test_unknown_mig_profile_is_explained():
    with pytest.raises(UnknownGPUError, match=r"valid profiles: 1g\.10gb"):
        parse_gpu_product("NVIDIA-H100-80GB-HBM3-MIG-1g.5gb")


def test_datasheet_figures_match_facts():
    h100 = lookup_gpu("NVIDIA-H100-80GB-HBM3")
    assert h100.bandwidth_bytes_per_s == pytest.approx(3.35e12)
    assert h100.fp16_dense_tflops == 989
    assert lookup_gpu("NVIDIA-H100-PCIe").bandwidth_bytes_per_s == pytest.approx(2.0e12)
    assert lookup_gpu("NVIDIA-H200").memory_bytes == 141 * GIB
    assert lookup_gpu("NVIDIA-B200").bandwidth_bytes_per_s == pytest.approx(8e12)
    assert lookup_gpu("NVIDIA-L4").bandwidth_bytes_per_s == pytest.approx(300e9)
    assert lookup_gpu("NVIDIA-A100-SXM4-80GB").bandwidth_bytes_per_s == pytest.approx(2039e9)


def test_paper_gpu_is_what_vllm_saw():
    gpu = lookup_gpu("NVIDIA-H100-64GB-HBM2e")
    assert gpu.memory_bytes == 64 * GIB
    assert gpu.usable_memory_bytes == int(63.43 * GIB)
    assert gpu.reported_memory_mib == 65247


def test_mig_profiles_follow_the_slice_model():
    a100 = lookup_gpu("NVIDIA-A100-SXM4-40GB")
    names = [p.name for p in a100.mig_profiles]
    assert names == ["1g.5gb", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"]
    small = a100.mig_profile("1g.5gb")
    assert (small.compute_slices, small.memory_slices, small.max_instances) == (1, 1, 7)
    assert small.resource_name == "nvidia.com/mig-1g.5gb"
    assert small.bandwidth_fraction == pytest.approx(1 / 8)
    full = a100.mig_profile("7g.40gb")
    assert (full.compute_slices, full.memory_slices, full.max_instances) == (7, 8, 1)
    for gpu in GPUS.values():
        previous = 0
        for profile in gpu.mig_profiles:
            assert profile.memory_bytes >= previous  # listed smallest first
            previous = profile.memory_bytes
            assert profile.memory_bytes < gpu.memory_bytes * profile.memory_slices / 8 + 1


@pytest.mark.parametrize(
    ("product", "smallest"),
    [
        ("NVIDIA-H100-80GB-HBM3", "1g.10gb"),
        ("NVIDIA-H100-NVL", "1g.12gb"),
        ("NVIDIA-H200", "1g.18gb"),
        ("NVIDIA-B200", "1g.23gb"),
    ],
)
def test_mig_names_per_gpu(product, smallest):
    gpu = lookup_gpu(product)
    assert gpu.mig_capable and gpu.mig_profiles[0].name == smallest


def test_gpus_without_mig():
    for product in ("NVIDIA-L4", "NVIDIA-L40S", "NVIDIA-A10G", "NVIDIA-H100-64GB-HBM2e"):
        gpu = lookup_gpu(product)
        assert not gpu.mig_capable
        with pytest.raises(ValueError, match="does not support MIG"):
            gpu.mig_profile("1g.10gb")


def test_reported_memory_from_the_node_label_overrides():
    gpu = lookup_gpu("NVIDIA-L4").with_reported_memory(20000)
    assert gpu.reported_memory_mib == 20000
    assert gpu.usable_memory_bytes < 20000 * (1 << 20)
    with pytest.raises(ValueError):
        gpu.with_reported_memory(0)


def test_mps_client_limit():
    assert MPS_MAX_CLIENTS == 48
