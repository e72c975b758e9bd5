"""Replicas of different models sharing one GPU under MPS (advisor/perfmodel_colocated.py): the
multi-class closed queue must reduce to `PerfModel.mps` for one model, and obey the physics of a
shared server whatever the mix.

Models: the paper's profiles calibrated and moved to the H100 80GB (paper data from
../shared/paper-data or $LLMPACK_PAPER_DATA, as in test_perfmodel.py), and hand-built PerfModels
with OPT-1.3B-like and Llama-2-13B-like terms. No test here compares with a measurement: there is
none of mixed co-location.
"""

from __future__ import annotations

import itertools
from functools import cache

import pytest

from llmpack.advisor.errors import AdvisorError
from llmpack.advisor.loaders import load_paper_profile
from llmpack.advisor.perfmodel import PerfModel, calibrate
from llmpack.advisor.perfmodel_colocated import MAX_STATES, Resident, predict
from llmpack.hardware import MPS_MAX_CLIENTS, lookup_gpu

H100 = lookup_gpu("NVIDIA-H100-80GB-HBM3")
PAPER_MODELS = ("opt-1.3b", "opt-2.7b", "llama-2-7b", "llama-2-13b")


@cache
def paper(model: str) -> PerfModel:
    return calibrate(load_paper_profile(model), gpu=H100)


def handmade(
    name: str = "opt-1.3b-like",
    *,
    weight_bytes: int = 2_600_000_000,
    kv_bytes_per_token: int = 196_608,
    idle_fixed_ms: float = 3.0,
    idle_per_sequence_ms: float = 0.03,
    running_curve: tuple[tuple[int, float], ...] = ((1, 1.0), (64, 60.0), (256, 200.0), (1024, 600.0)),
    kappa: float = 0.014,
) -> PerfModel:
    """OPT-1.3B-like terms by default (2.6 GB of fp16 weights, 24 layers x 2 x 2048 x 2 B of KV per
    token), on the H100 80GB's catalogue bandwidth."""
    return PerfModel(
        model_name=name,
        gpu=H100,
        bandwidth_bytes_per_s=H100.bandwidth_bytes_per_s,
        weight_bytes=weight_bytes,
        kv_bytes_per_token=kv_bytes_per_token,
        prompt_tokens=200,
        output_tokens=200,
        weight_efficiency=0.8,
        kv_efficiency=0.5,
        idle_fixed_ms=idle_fixed_ms,
        idle_per_sequence_ms=idle_per_sequence_ms,
        running_curve=running_curve,
        mps_concurrency_gain=kappa,
        measured_gpu_product=H100.product,
    )


def llama13_like(kappa: float = 0.014) -> PerfModel:
    """Llama-2-13B-like: 26 GB of weights, 40 layers x 2 x 5120 x 2 B of KV per token, a GPU busy
    most of each step."""
    return handmade(
        "llama-2-13b-like",
        weight_bytes=26_000_000_000,
        kv_bytes_per_token=819_200,
        idle_fixed_ms=1.5,
        idle_per_sequence_ms=0.01,
        kappa=kappa,
    )


def gpu_shares(residents: list[Resident], predictions: tuple) -> list[float]:
    """Each group's share of the GPU's time, X_k * D_k = n_k * D_k / ITL_k."""
    total = sum(r.replicas for r in residents)
    return [
        r.replicas * r.perf.gpu_ms(p.running_per_replica, total) / p.itl_mean_ms
        for r, p in zip(residents, predictions, strict=True)
    ]


# One model: exactly PerfModel.mps ------------------------------------------------------------------


@pytest.mark.parametrize("model", PAPER_MODELS)
@pytest.mark.parametrize(("replicas", "batch"), [(1, 1), (1, 96), (2, 96), (3, 128), (4, 256), (7, 33)])
def test_one_group_is_exactly_mps(model, replicas, batch):
    """Same floats, field by field (the whole Prediction, note included)."""
    perf = paper(model)
    (alone,) = predict([Resident(perf, batch, replicas)])
    assert alone == perf.mps(replicas, batch)


@pytest.mark.parametrize("replicas", [1, 2, 5, 16, MPS_MAX_CLIENTS])
@pytest.mark.parametrize("batch", [1, 64, 300, 4096])
def test_one_handmade_group_is_exactly_mps_including_extrapolation(replicas, batch):
    perf = handmade()
    (alone,) = predict([Resident(perf, batch, replicas)])
    expected = perf.mps(replicas, batch)
    assert alone.total_tokens_per_s == expected.total_tokens_per_s
    assert alone.output_tokens_per_s == expected.output_tokens_per_s
    assert alone.itl_mean_ms == expected.itl_mean_ms
    assert alone.running_per_replica == expected.running_per_replica
    assert alone.gpu_busy_fraction == expected.gpu_busy_fraction
    assert alone == expected


def test_no_residents_no_predictions():
    assert predict([]) == ()
    assert predict(()) == ()


def test_groups_of_one_model_with_a_constant_fill_aggregate_to_mps_of_their_sum():
    """With running = B at any concurrency, splitting R replicas into groups is the same closed queue
    (identical classes): each group sees mps(R)'s ITL, and their throughputs add up to mps(R)'s."""
    perf = handmade(running_curve=((1, 1.0), (4096, 4096.0)))
    for split in [(1, 1), (2, 3), (1, 1, 1, 1), (4, 2, 1)]:
        whole = perf.mps(sum(split), 96)
        parts = predict([Resident(perf, 96, n) for n in split])
        for part in parts:
            assert part.itl_mean_ms == pytest.approx(whole.itl_mean_ms, rel=1e-12)
            assert part.gpu_busy_fraction == pytest.approx(whole.gpu_busy_fraction, rel=1e-12)
        assert sum(p.total_tokens_per_s for p in parts) == pytest.approx(whole.total_tokens_per_s, rel=1e-12)


# A mix: the physics of one shared server ------------------------------------------------------------

MIXES = [
    [("opt-1.3b", 96, 2), ("opt-2.7b", 128, 1)],
    [("opt-1.3b", 96, 1), ("llama-2-13b", 64, 1)],
    [("opt-1.3b", 64, 3), ("opt-2.7b", 32, 2), ("llama-2-7b", 96, 1)],
    [("llama-2-7b", 256, 2), ("llama-2-13b", 16, 2), ("opt-1.3b", 8, 4)],
]


def residents_of(mix) -> list[Resident]:
    return [Resident(paper(model), batch, replicas) for model, batch, replicas in mix]


@pytest.mark.parametrize("mix", MIXES)
def test_order_of_groups_does_not_change_results(mix):
    residents = residents_of(mix)
    reference = predict(residents)
    for order in itertools.permutations(range(len(residents))):
        shuffled = predict([residents[i] for i in order])
        for i, prediction in zip(order, shuffled, strict=True):
            expected = reference[i]
            assert prediction.itl_mean_ms == pytest.approx(expected.itl_mean_ms, rel=1e-12)
            assert prediction.total_tokens_per_s == pytest.approx(expected.total_tokens_per_s, rel=1e-12)
            assert prediction.gpu_busy_fraction == pytest.approx(expected.gpu_busy_fraction, rel=1e-12)
            assert (prediction.replicas, prediction.batch) == (expected.replicas, expected.batch)
            assert prediction.running_per_replica == expected.running_per_replica


@pytest.mark.parametrize("mix", MIXES)
def test_busy_shares_add_up_to_the_gpu_busy_fraction_and_at_most_one(mix):
    residents = residents_of(mix)
    predictions = predict(residents)
    shares = gpu_shares(residents, predictions)
    busy = {p.gpu_busy_fraction for p in predictions}
    assert len(busy) == 1
    assert sum(shares) == pytest.approx(busy.pop(), rel=1e-12)
    assert 0 < sum(shares) <= 1.0
    assert all(p.mode == "mps" for p in predictions)


@pytest.mark.parametrize("mix", MIXES)
def test_each_group_is_slower_than_alone(mix):
    """A co-resident only adds queueing at the GPU; the concurrency gain of the larger total
    (kappa = 0.014) is far smaller. Each replica's throughput falls accordingly."""
    residents = residents_of(mix)
    for resident, mixed in zip(residents, predict(residents), strict=True):
        alone = resident.perf.mps(resident.replicas, resident.batch)
        assert mixed.itl_mean_ms > alone.itl_mean_ms
        assert mixed.total_tokens_per_s < alone.total_tokens_per_s
        assert mixed.running_per_replica == alone.running_per_replica
        assert "no measurement behind this mixed prediction" in mixed.note
        assert "no measurement" not in alone.note


@pytest.mark.parametrize("kappa", [0.0, 0.014])
def test_adding_a_group_never_lowers_an_itl(kappa):
    """Grow a mix one group (or one replica) at a time: no group's ITL ever falls, and the GPU gets
    busier. Without the concurrency gain (kappa = 0) this is the monotonicity of the closed queue;
    with it, for these realistic co-residents, the added queueing dominates."""
    light = handmade(kappa=kappa)
    heavy = llama13_like(kappa)
    tiny = handmade("tiny", weight_bytes=250_000_000, kv_bytes_per_token=18_432, kappa=kappa)
    steps = [
        [Resident(light, 96, 1)],
        [Resident(light, 96, 1), Resident(tiny, 32, 1)],
        [Resident(light, 96, 1), Resident(tiny, 32, 2)],
        [Resident(light, 96, 1), Resident(tiny, 32, 2), Resident(heavy, 64, 1)],
        [Resident(light, 96, 1), Resident(tiny, 32, 2), Resident(heavy, 64, 2)],
    ]
    previous = None
    for residents in steps:
        predictions = predict(residents)
        if previous is not None:
            for before, now in zip(previous, predictions, strict=False):
                assert now.itl_mean_ms >= before.itl_mean_ms
                assert now.gpu_busy_fraction >= before.gpu_busy_fraction
        previous = predictions


def test_a_heavy_co_resident_slows_a_light_one_more_than_a_light_co_resident():
    opt13, opt27, llama13 = paper("opt-1.3b"), paper("opt-2.7b"), paper("llama-2-13b")
    (alone,) = predict([Resident(opt13, 96, 1)])
    with_light = predict([Resident(opt13, 96, 1), Resident(opt13, 96, 1)])[0]
    with_medium = predict([Resident(opt13, 96, 1), Resident(opt27, 96, 1)])[0]
    with_heavy = predict([Resident(opt13, 96, 1), Resident(llama13, 96, 1)])[0]
    assert alone.itl_mean_ms < with_light.itl_mean_ms < with_medium.itl_mean_ms < with_heavy.itl_mean_ms
    # a GPU-bound 13B co-resident costs the 1.3B replica over a quarter of its throughput (~30%)
    assert with_heavy.total_tokens_per_s < 0.75 * alone.total_tokens_per_s


def test_the_light_co_resident_hurts_the_heavy_one_little():
    """Llama-2-13B keeps the GPU busy nearly all of its step; an OPT-1.3B replica's short GPU time
    fits its small idle gaps only partly, so the 13B replica loses less than the 1.3B one does."""
    opt13, llama13 = paper("opt-1.3b"), paper("llama-2-13b")
    light, heavy = predict([Resident(opt13, 96, 1), Resident(llama13, 96, 1)])
    light_loss = 1 - light.total_tokens_per_s / opt13.single(96).total_tokens_per_s
    heavy_loss = 1 - heavy.total_tokens_per_s / llama13.single(96).total_tokens_per_s
    assert 0 < heavy_loss < light_loss


def test_a_single_replica_alone_is_single_and_any_company_makes_mps():
    perf = handmade()
    assert predict([Resident(perf, 64, 1)])[0].mode == "single"
    assert predict([Resident(perf, 64, 2)])[0].mode == "mps"
    assert {p.mode for p in predict([Resident(perf, 64, 1), Resident(llama13_like(), 8, 1)])} == {"mps"}


# Refusals -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        Resident(handmade(), 0, 1),
        Resident(handmade(), 8, 0),
        Resident(handmade(), 8, -2),
        Resident(handmade(), True, 1),
        Resident(handmade(), 8, 2.0),
        Resident(handmade(), 8, MPS_MAX_CLIENTS + 1),
    ],
)
def test_invalid_counts_are_refused(bad):
    with pytest.raises(AdvisorError):
        predict([Resident(handmade(), 8, 1), bad])


def test_more_replicas_than_mps_serves_are_refused():
    perf = handmade()
    fine = [Resident(perf, 8, MPS_MAX_CLIENTS - 1), Resident(llama13_like(), 8, 1)]
    assert len(predict(fine)) == 2
    with pytest.raises(AdvisorError, match=f"exceed the {MPS_MAX_CLIENTS} clients"):
        predict([*fine, Resident(perf, 16, 1)])


def test_too_large_a_lattice_is_refused_with_the_reason():
    groups = 1
    while 2 ** (groups + 1) <= MAX_STATES:
        groups += 1
    at_limit = [Resident(handmade(f"m{i}"), 8, 1) for i in range(groups)]  # 2^groups states
    assert len(predict(at_limit)) == groups
    with pytest.raises(AdvisorError, match="population states"):
        predict([*at_limit, Resident(handmade("one-more"), 8, 1)])


def test_residents_on_different_gpus_are_refused():
    other = lookup_gpu("NVIDIA-A100-SXM4-80GB")
    with pytest.raises(AdvisorError, match="on one GPU"):
        predict([Resident(handmade(), 8, 1), Resident(handmade().on_gpu(other), 8, 1)])


def test_a_moved_model_is_predicted_on_its_new_gpu():
    other = lookup_gpu("NVIDIA-A100-SXM4-80GB")
    moved = [Resident(handmade().on_gpu(other), 8, 1), Resident(llama13_like().on_gpu(other), 8, 1)]
    here = [Resident(handmade(), 8, 1), Resident(llama13_like(), 8, 1)]
    slower, faster = predict(moved), predict(here)
    assert all(s.itl_mean_ms > f.itl_mean_ms for s, f in zip(slower, faster, strict=True))
