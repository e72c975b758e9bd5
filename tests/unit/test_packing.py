"""Replica packing: replicas per GPU, MIG slices, memory freed, and the whole advise() output."""

from __future__ import annotations

import pytest

from llmpack.advisor import AdvisorError, AdvisorOptions, advise
from llmpack.advisor.loaders import load_paper_profile
from llmpack.advisor.packing import (
    STARTUP_RESERVE_BYTES,
    default_kv_pool_bytes,
    fit_by_memory,
    memory_freed,
    pack_replicas,
    smallest_mig_profile,
)
from llmpack.hardware import lookup_gpu

GIB = 1 << 30


def test_replicas_are_limited_by_memory():
    packed = pack_replicas(10 * GIB, 63 * GIB)
    assert packed.replicas_per_gpu == 6 == fit_by_memory(10 * GIB, 63 * GIB)
    assert packed.limited_by == "memory"
    assert packed.replicas_per_gpu * packed.slot_bytes <= 63 * GIB - STARTUP_RESERVE_BYTES
    assert packed.slot_bytes >= 10 * GIB
    assert packed.gpu_memory_utilization == pytest.approx(packed.slot_bytes / (63 * GIB), abs=1e-3)
    assert packed.gpu_memory_utilization <= packed.slot_bytes / (63 * GIB)


def test_replicas_are_capped_by_max_replicas_and_the_mps_limit():
    assert pack_replicas(1 * GIB, 80 * GIB).replicas_per_gpu == 8
    assert pack_replicas(1 * GIB, 80 * GIB).limited_by == "max_replicas_per_gpu"
    big = pack_replicas(1 * GIB, 180 * GIB, max_replicas_per_gpu=48)
    assert big.replicas_per_gpu == 48 and big.limited_by == "MPS client limit"
    assert pack_replicas(1 * GIB, 180 * GIB, max_replicas_per_gpu=100).replicas_per_gpu == 48


def test_fixed_replicas():
    packed = pack_replicas(10 * GIB, 63 * GIB, fixed_replicas=2)
    assert packed.replicas_per_gpu == 2 and packed.limited_by == "override"
    assert packed.gpu_memory_utilization < 0.5
    with pytest.raises(AdvisorError, match=r"replicasPerGPU=7 does not fit.*lower replicasPerGPU to 6"):
        pack_replicas(10 * GIB, 63 * GIB, fixed_replicas=7)


def test_a_replica_larger_than_the_gpu_is_an_advisor_error():
    with pytest.raises(AdvisorError, match=r"one replica needs 30\.00 GiB but NVIDIA-L4 offers"):
        pack_replicas(30 * GIB, lookup_gpu("NVIDIA-L4").usable_memory_bytes, device_name="NVIDIA-L4")


def test_packed_gpu_memory_utilization_is_never_vllms_default():
    for per_replica in (3 * GIB, 12 * GIB, 25 * GIB):
        packed = pack_replicas(per_replica, 63 * GIB)
        if packed.replicas_per_gpu > 1:
            assert packed.gpu_memory_utilization * packed.replicas_per_gpu <= 1.0
            assert packed.gpu_memory_utilization < 0.9


def test_smallest_mig_profile():
    h100 = lookup_gpu("NVIDIA-H100-80GB-HBM3")
    small = smallest_mig_profile(5 * GIB, h100)
    assert small.profile.name == "1g.10gb" and small.instances_per_gpu == 7
    rec = advise(load_paper_profile("opt-1.3b"), gpu=h100)
    assert rec.mig_profile == "1g.20gb" and 0 < rec.mig_gpu_memory_utilization < 1
    # 15 GiB: 1g.20gb and 2g.20gb hold it; the one with fewer compute slices is smaller
    mid = smallest_mig_profile(15 * GIB, h100)
    assert mid.profile.name == "1g.20gb" and mid.instances_per_gpu == 4
    assert smallest_mig_profile(30 * GIB, h100).profile.name == "3g.40gb"
    assert smallest_mig_profile(90 * GIB, h100) is None
    assert smallest_mig_profile(1 * GIB, lookup_gpu("NVIDIA-L4")) is None


def test_memory_freed():
    freed = memory_freed(50 * GIB, 10 * GIB, 64 * GIB)
    assert freed.freed_bytes == 40 * GIB and freed.fraction == pytest.approx(40 / 64)
    assert memory_freed(5 * GIB, 10 * GIB, 64 * GIB).freed_bytes == 0
    assert default_kv_pool_bytes(60 * GIB, 5 * GIB, 0.9) == 49 * GIB
    assert default_kv_pool_bytes(10 * GIB, 20 * GIB, 0.9) == 0


def test_advise_packs_the_paper_opt_1_3b():
    rec = advise(load_paper_profile("opt-1.3b"))
    gpu = lookup_gpu("NVIDIA-H100-64GB-HBM2e")
    assert rec.gpu_product == gpu.product
    assert rec.replicas_per_gpu >= 2  # the paper ran 2 and 4 replicas of B=96 on this GPU
    assert rec.replicas_per_gpu * rec.per_replica_memory_bytes <= gpu.usable_memory_bytes
    assert rec.per_replica_memory_bytes == rec.kv_cache_bytes + rec.non_kv_memory_bytes
    assert rec.kv_cache_bytes == rec.kv_tokens * 196_608 and rec.kv_tokens % 16 == 0
    args = rec.vllm_args
    assert args[args.index("--max-num-seqs") + 1] == "96"
    assert args[args.index("--kv-cache-memory-bytes") + 1] == str(rec.kv_cache_bytes)
    assert float(args[args.index("--gpu-memory-utilization") + 1]) == rec.gpu_memory_utilization < 0.9
    assert args[args.index("--max-model-len") + 1] == "2048"
    assert rec.mig_profile is None  # the paper's H100 64 GB has no catalogued MIG profiles


def test_advise_for_another_gpu():
    rec = advise(load_paper_profile("opt-1.3b"), gpu=lookup_gpu("NVIDIA-H100-80GB-HBM3"))
    assert rec.gpu_product == "NVIDIA-H100-80GB-HBM3"
    assert rec.mig_profile == "1g.20gb" and rec.mig_instances_per_gpu == 4
    assert any("measured on NVIDIA-H100-64GB-HBM2e" in note for note in rec.notes)
    assert rec.measured_tokens_per_s is None  # throughput does not transfer to another GPU
    with pytest.raises(AdvisorError, match="one replica needs"):
        advise(load_paper_profile("llama-2-13b"), gpu=lookup_gpu("NVIDIA-L4"))


def test_max_replicas_option():
    rec = advise(load_paper_profile("opt-1.3b"), AdvisorOptions(max_replicas_per_gpu=2))
    assert rec.replicas_per_gpu == 2 and rec.replicas_limited_by == "max_replicas_per_gpu"
    fixed = advise(load_paper_profile("opt-1.3b"), AdvisorOptions(replicas_per_gpu=3))
    assert fixed.replicas_per_gpu == 3 and fixed.replicas_limited_by == "override"


def test_worst_case_kv_that_does_not_fit_falls_back_to_the_measured_peak():
    # Llama-2-7B at 130 output tokens, plateau -> B=256: 256 x 384 tokens of KV (48 GiB) plus the
    # weights do not fit, yet the paper ran B=256 on this GPU without preemption.
    rec = advise(load_paper_profile("llama-2-7b", output_len=130), AdvisorOptions(policy="plateau"))
    assert rec.b_opt == 256 and rec.replicas_per_gpu == 1
    assert "all the KV cache one GPU offers" in rec.kv_sizing
    assert rec.per_replica_memory_bytes <= rec.gpu_usable_memory_bytes


def test_smaller_max_model_len_and_workload_options():
    rec = advise(load_paper_profile("opt-1.3b", output_len=390), AdvisorOptions(max_model_len=1024))
    assert rec.max_model_len == 1024 and rec.vllm_args[-1] == "1024"
    short = advise(load_paper_profile("opt-1.3b", output_len=390), AdvisorOptions(output_tokens=100))
    assert short.kv_tokens == 128 * 352  # 242 + 100 -> 22 blocks
