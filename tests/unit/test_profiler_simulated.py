"""The simulated backend: deterministic for a seed, and shaped like a memory-bound decode
(throughput plateaus, latency grows, preemptions once the KV cache is full)."""

from __future__ import annotations

import itertools

import pytest

from llmpack.advisor import advise
from llmpack.api.llmdeployment import DEFAULT_CANDIDATE_BATCH_SIZES
from llmpack.api.profile import Profile
from llmpack.cli import UserError
from llmpack.profiler.backend import BackendError
from llmpack.profiler.facts import ProfileRequest
from llmpack.profiler.simulated import SimulatedBackend
from llmpack.profiler.sweep import run_sweep


def request(model="facebook/opt-1.3b", gpu="NVIDIA-H100-80GB-HBM3", **changes) -> ProfileRequest:
    args = {
        "model": model,
        "gpu_product": gpu,
        "dtype": "auto",
        "max_model_len": 2048,
        "prompt_tokens": 512,
        "output_tokens": 256,
    }
    args.update(changes)
    return ProfileRequest(**args)


def simulate(seed=0, candidates=DEFAULT_CANDIDATE_BATCH_SIZES, mode="exhaustive", **changes) -> Profile:
    backend = SimulatedBackend(request(**changes), seed=seed)
    with backend:
        result = run_sweep(candidates, backend.measure, mode)
    return backend.profile(result.points, result.notes())


def test_same_seed_same_profile():
    assert simulate(seed=7).to_json() == simulate(seed=7).to_json()


def test_another_seed_other_noise_same_shape():
    a, b = simulate(seed=1), simulate(seed=2)
    assert a.points[5].total_tokens_per_s != b.points[5].total_tokens_per_s
    for pa, pb in zip(a.points, b.points, strict=True):
        assert pa.total_tokens_per_s == pytest.approx(pb.total_tokens_per_s, rel=0.1)


def test_a_point_does_not_depend_on_the_sweep_order():
    exhaustive = simulate(seed=3)
    adaptive = simulate(seed=3, mode="adaptive")
    for point in adaptive.points:
        assert point == exhaustive.point(point.max_num_seqs)


def test_throughput_grows_then_plateaus_and_latency_grows():
    points = simulate().points
    tps = [p.total_tokens_per_s for p in points]
    itl = [p.itl_mean_ms for p in points]
    assert tps[1] > 1.8 * tps[0]  # small batches: nearly linear
    assert all(b > a for a, b in itertools.pairwise(itl))  # ITL grows with the batch
    by_batch = {p.max_num_seqs: p.total_tokens_per_s for p in points}
    assert by_batch[512] < 1.15 * by_batch[256]  # plateau: doubling the batch adds little
    assert by_batch[256] > 10 * by_batch[1]


def test_preemptions_once_the_kv_cache_is_full():
    profile = simulate(model="meta-llama/Llama-2-13b-hf")
    small, large = profile.point(32), profile.point(512)
    assert small.preemptions == 0 and small.kv_cache_usage_peak < 1
    assert large.preemptions > 0 and large.kv_cache_usage_peak == 1.0
    # the advisor stops before the preempting batches
    assert profile.point(advise(profile).b_opt).preemptions == 0


def test_profile_is_valid_and_advisable():
    profile = Profile.from_json(simulate().to_json())
    assert profile.backend == "simulated" and "not a measurement" in profile.source
    assert profile.kv_capacity_tokens and profile.non_kv_memory_bytes
    recommendation = advise(profile)
    assert 32 <= recommendation.b_opt <= 512
    point = profile.point(64)
    for fraction in (point.gpu_utilization, point.dram_bandwidth_utilization, point.sm_occupancy):
        assert 0 < fraction <= 1


def test_faster_gpu_is_faster():
    h100 = simulate(gpu="NVIDIA-H100-80GB-HBM3").point(128).total_tokens_per_s
    l4 = simulate(gpu="NVIDIA-L4").point(128).total_tokens_per_s
    assert h100 > 3 * l4


def test_mig_slice_is_slower_and_smaller():
    whole = SimulatedBackend(request(gpu="NVIDIA-H100-80GB-HBM3"))
    slice_ = SimulatedBackend(request(gpu="NVIDIA-H100-80GB-HBM3-MIG-3g.40gb"))
    assert slice_.kv_capacity_tokens < whole.kv_capacity_tokens
    assert slice_.measure(64).total_tokens_per_s < whole.measure(64).total_tokens_per_s
    assert slice_.gpu_facts.mig_profile == "3g.40gb"


def test_model_that_does_not_fit_fails_to_start():
    backend = SimulatedBackend(
        request(model="meta-llama/Llama-3.1-8B-Instruct", gpu="NVIDIA-L4", max_model_len=131072)
    )
    with pytest.raises(BackendError, match="does not fit"):
        backend.start()


def test_unknown_gpu_is_a_user_error():
    with pytest.raises(UserError, match="unknown GPU product"):
        SimulatedBackend(request(gpu="NVIDIA-GeForce-RTX-9090"))
