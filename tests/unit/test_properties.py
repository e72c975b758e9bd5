"""Properties that must hold for any profile, not just the paper's (hypothesis)."""

from __future__ import annotations

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from llmpack.advisor import AdvisorError, AdvisorOptions, advise
from llmpack.advisor.bca import select_batch
from llmpack.advisor.memory import kv_budget, kv_bytes_for_batch
from llmpack.advisor.packing import pack_replicas
from llmpack.api.profile import Profile, ProfilePoint
from llmpack.hardware import GPUS, MPS_MAX_CLIENTS

GIB = 1 << 30
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

policies = st.sampled_from(["efficiency", "plateau"])


@st.composite
def points(draw, min_size=1, max_size=12):
    """Measured points: either arbitrary numbers, or a realistic curve (throughput saturating,
    latency growing with batch) with noise. Latencies are occasionally missing."""
    batches = sorted(draw(st.sets(st.integers(1, 1024), min_size=min_size, max_size=max_size)))
    realistic = draw(st.booleans())
    t1, itl1, knee = draw(st.floats(10, 2000)), draw(st.floats(1, 50)), draw(st.floats(4, 512))
    result = []
    for batch in batches:
        if realistic:
            noise = draw(st.floats(0.9, 1.1))
            tps = t1 * batch / (1 + batch / knee) * noise
            itl = itl1 * (1 + batch / knee) * draw(st.floats(0.9, 1.1))
        else:
            tps, itl = draw(st.floats(1.0, 1e5)), draw(st.floats(0.5, 500.0))
        missing_itl = draw(st.integers(0, 9)) == 0
        result.append(
            ProfilePoint(
                max_num_seqs=batch,
                total_tokens_per_s=tps,
                itl_mean_ms=None if missing_itl else itl,
                itl_p99_ms=None if missing_itl else itl * draw(st.floats(1.0, 4.0)),
                preemptions=draw(st.sampled_from([0, 0, 0, 0, 0, 0, 3])),
            )
        )
    return result


@FAST
@given(points(), policies, st.one_of(st.none(), st.floats(0.5, 600.0)), st.floats(0.01, 0.99))
def test_b_opt_is_always_a_measured_usable_batch(pts, policy, slo, epsilon):
    options = AdvisorOptions(policy=policy, slo_itl_mean_ms=slo, epsilon=epsilon)
    try:
        selection = select_batch(pts, options)
    except AdvisorError:
        return
    usable = {p.max_num_seqs for p in pts if p.preemptions == 0}
    assert selection.b_opt in usable
    chosen = [v for v in selection.verdicts if v.chosen]
    assert len(chosen) == 1 and chosen[0].kept and chosen[0].max_num_seqs == selection.b_opt
    assert all(v.reasons for v in selection.verdicts)  # every candidate is explained


@FAST
@given(
    points(),
    policies,
    st.floats(0.5, 600.0),
    st.floats(0.05, 1.0),
    st.one_of(st.none(), st.floats(0.5, 2000.0)),
)
def test_tightening_the_slo_never_raises_b_opt(pts, policy, loose, factor, p99):
    tight = loose * factor

    def b_opt(slo):
        try:
            return select_batch(
                pts, AdvisorOptions(policy=policy, slo_itl_mean_ms=slo, slo_itl_p99_ms=p99)
            ).b_opt
        except AdvisorError:
            return None

    loose_b, tight_b = b_opt(loose), b_opt(tight)
    if loose_b is None:
        assert tight_b is None  # a tighter SLO cannot be met where a looser one was not
    elif tight_b is not None:
        assert tight_b <= loose_b


@FAST
@given(
    st.integers(0, 4096),
    st.integers(0, 4096),
    st.integers(0, 8192),
    st.integers(0, 8192),
    st.integers(1, 1 << 20),
    st.sampled_from([1, 8, 16, 32]),
)
def test_kv_bytes_grow_with_batch_and_sequence_length(b1, b2, prompt, output, per_token, block):
    small, large = sorted((b1, b2))
    assert kv_bytes_for_batch(small, prompt, output, per_token, block) <= kv_bytes_for_batch(
        large, prompt, output, per_token, block
    )
    assert kv_bytes_for_batch(large, prompt, output, per_token, block) <= kv_bytes_for_batch(
        large, prompt + 1, output, per_token, block
    )
    assert kv_bytes_for_batch(large, prompt, output, per_token, block) <= kv_bytes_for_batch(
        large, prompt, output + 17, per_token, block
    )
    if prompt + output > 0:
        assert kv_bytes_for_batch(large + 1, prompt, output, per_token, block) > kv_bytes_for_batch(
            large, prompt, output, per_token, block
        )
    assert (
        kv_bytes_for_batch(large, prompt, output, per_token, block) >= large * (prompt + output) * per_token
    )


@FAST
@given(st.integers(1, 2048), st.integers(1, 2048), st.integers(1, 4096), st.integers(1, 8192))
def test_kv_budget_grows_with_batch(b1, b2, seq, max_len):
    small, large = sorted((b1, b2))

    def budget(batch):
        return kv_budget(
            batch=batch, prompt_tokens=seq, output_tokens=seq, bytes_per_token=1000, max_model_len=max_len
        ).bytes

    assert budget(small) <= budget(large)


@FAST
@given(
    st.integers(1, 200 * GIB),
    st.sampled_from(sorted(GPUS)),
    st.integers(1, MPS_MAX_CLIENTS),
    st.one_of(st.none(), st.integers(1, MPS_MAX_CLIENTS)),
)
def test_replicas_times_memory_never_exceed_the_gpu(per_replica, product, max_replicas, fixed):
    gpu = GPUS[product]
    try:
        packed = pack_replicas(
            per_replica, gpu.usable_memory_bytes, max_replicas_per_gpu=max_replicas, fixed_replicas=fixed
        )
    except AdvisorError:
        return
    assert 1 <= packed.replicas_per_gpu <= MPS_MAX_CLIENTS
    assert packed.replicas_per_gpu * per_replica <= gpu.usable_memory_bytes <= gpu.memory_bytes
    assert packed.replicas_per_gpu * packed.slot_bytes <= gpu.usable_memory_bytes
    assert packed.gpu_memory_utilization * packed.replicas_per_gpu <= 1.0
    if fixed is None:
        assert packed.replicas_per_gpu <= max_replicas


def _profile(pts: list[ProfilePoint], weights_gib: float, prompt: int, output: int) -> Profile:
    return Profile(
        model={
            "name": "synthetic",
            "num_layers": 24,
            "num_kv_heads": 8,
            "head_dim": 64,
            "weight_bytes": int(weights_gib * GIB),
            "kv_bytes_per_token": 2 * 24 * 8 * 64 * 2,
            "vocab_size": 50_000,
            "max_model_len": 4096,
        },
        gpu={"product": "NVIDIA-H100-80GB-HBM3", "memory_bytes": 80 * GIB},
        workload={"prompt_tokens": prompt, "output_tokens": output},
        points=pts,
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    points(max_size=8),
    policies,
    st.floats(0.1, 40.0),
    st.integers(1, 4096),
    st.integers(1, 4096),
    st.sampled_from(sorted(GPUS)),
)
def test_advise_never_overcommits_a_gpu(pts, policy, weights_gib, prompt, output, product):
    assume(any(p.preemptions == 0 for p in pts))
    profile = _profile(pts, weights_gib, prompt, output)
    try:
        rec = advise(profile, AdvisorOptions(policy=policy), gpu=GPUS[product])
    except AdvisorError:
        return
    assert rec.b_opt in profile.batch_sizes
    assert rec.replicas_per_gpu * rec.per_replica_memory_bytes <= GPUS[product].usable_memory_bytes
    assert rec.kv_cache_bytes == rec.kv_tokens * profile.model.kv_bytes_per_token
    assert 0.0 <= rec.memory_freed_fraction <= 1.0
