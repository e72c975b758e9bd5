"""The GPUPool's pure parts: the mixed co-location prediction and the placement (planner/pool.py),
on the paper's measured profiles (H100) rescaled to the H100 80GB."""

from __future__ import annotations

import pytest

from llmpack.advisor import perfmodel
from llmpack.advisor.loaders import load_paper_profile
from llmpack.advisor.perfmodel_colocated import Resident, predict
from llmpack.hardware import lookup_gpu
from llmpack.planner import pool as P
from llmpack.planner.pool import GIB, PoolMember, place

H100 = lookup_gpu("NVIDIA-H100-80GB-HBM3")


@pytest.fixture(scope="module")
def opt13():
    return perfmodel.calibrate(load_paper_profile("opt-1.3b"), gpu=H100)


@pytest.fixture(scope="module")
def opt27():
    return perfmodel.calibrate(load_paper_profile("opt-2.7b"), gpu=H100)


@pytest.mark.parametrize(("replicas", "batch"), [(1, 64), (2, 96), (3, 128), (5, 32)])
def test_one_model_alone_is_exactly_the_homogeneous_prediction(opt13, replicas, batch):
    (mixed,) = predict([Resident(opt13, batch, replicas)])
    alone = opt13.mps(replicas, batch)
    assert mixed.total_tokens_per_s == pytest.approx(alone.total_tokens_per_s, rel=1e-12)
    assert mixed.itl_mean_ms == pytest.approx(alone.itl_mean_ms, rel=1e-12)
    assert mixed.gpu_busy_fraction == pytest.approx(alone.gpu_busy_fraction, rel=1e-12)


def test_a_co_resident_slows_a_replica_and_order_does_not_matter(opt13, opt27):
    (alone,) = predict([Resident(opt13, 96, 1)])
    a, b = predict([Resident(opt13, 96, 1), Resident(opt27, 128, 2)])
    b2, a2 = predict([Resident(opt27, 128, 2), Resident(opt13, 96, 1)])
    assert a.itl_mean_ms > alone.itl_mean_ms
    assert (a.itl_mean_ms, b.itl_mean_ms) == pytest.approx((a2.itl_mean_ms, b2.itl_mean_ms), rel=1e-12)
    assert a.gpu_busy_fraction <= 1.0


def member(perf, name, replicas, *, gib=10.0, cap=None, revision="r1", batch=96):
    return PoolMember(
        name=name,
        perf=perf,
        batch=batch,
        replica_bytes=int(gib * GIB),
        itl_cap_ms=cap,
        replicas=replicas,
        revision=revision,
    )


def test_members_share_gpus_and_use_fewer_than_apart(opt13, opt27):
    members = [
        member(opt13, "chat", 2, gib=9),
        member(opt27, "code", 2, gib=14),
        member(opt13, "tag", 1, gib=9),
    ]
    placement = place(members, gpu=H100, max_gpus=8)
    assert all(r.replicas == r.wanted and not r.message for r in placement.members.values())
    assert placement.gpus_used == 1  # 61 GiB of caps on one GPU; apart they take three
    assert placement.memory_bound({m.name: m for m in members}, H100.usable_memory_bytes) == 1


def test_an_itl_cap_keeps_a_member_off_a_busy_gpu(opt13, opt27):
    loose = place([member(opt13, "a", 3, gib=9), member(opt27, "b", 2, gib=9)], gpu=H100, max_gpus=8)
    itl_b = max(p.itl_mean_ms for (g, n), p in loose.predictions.items() if n == "b")
    tight = place(
        [member(opt13, "a", 3, gib=9), member(opt27, "b", 2, gib=9, cap=itl_b * 0.8)], gpu=H100, max_gpus=8
    )
    assert tight.gpus_used > loose.gpus_used
    assert all(p.itl_mean_ms <= itl_b * 0.8 for (g, n), p in tight.predictions.items() if n == "b")


def test_placement_is_stable_when_one_member_changes(opt13, opt27):
    members = [member(opt13, "a", 2, gib=20), member(opt27, "b", 2, gib=20), member(opt13, "c", 2, gib=20)]
    first = place(members, gpu=H100, max_gpus=8)
    where = {n: dict(r.placed) for n, r in first.members.items()}
    revisions = {m.name: m.revision for m in members}
    # b scales up, c changes its replica (new revision), a is untouched
    changed = [members[0], member(opt27, "b", 3, gib=20), member(opt13, "c", 2, gib=12, revision="r2")]
    second = place(changed, gpu=H100, max_gpus=8, previous=first.gpus, previous_revisions=revisions)
    assert dict(second.members["a"].placed) == where["a"]
    for gpu, count in where["b"].items():
        assert second.members["b"].placed.get(gpu, 0) >= count  # b's running replicas stay put
    assert second.members["b"].replicas == 3
    # removing a member frees its memory for the next, moving nobody
    revisions = {m.name: m.revision for m in changed}
    third = place(changed[1:], gpu=H100, max_gpus=8, previous=second.gpus, previous_revisions=revisions)
    for name in "bc":
        assert dict(third.members[name].placed) == dict(second.members[name].placed), name


def test_a_rebalance_may_move_everyone_and_packs_tighter(opt13):
    members = [member(opt13, n, 1, gib=30) for n in "abc"]
    first = place(members, gpu=H100, max_gpus=8)
    assert first.gpus_used == 2
    shrunk = [member(opt13, n, 1, gib=20, revision="r1") for n in "abc"]
    kept = place(
        shrunk,
        gpu=H100,
        max_gpus=8,
        previous=first.gpus,
        previous_revisions={"a": "r1", "b": "r1", "c": "r1"},
    )
    assert kept.gpus_used == 2
    again = place(shrunk, gpu=H100, max_gpus=8, previous=first.gpus, rebalance=True)
    assert again.gpus_used == 1


def test_a_member_that_does_not_fit_is_refused_and_the_others_serve(opt13, opt27):
    placement = place([member(opt13, "a", 2, gib=30), member(opt27, "big", 3, gib=35)], gpu=H100, max_gpus=2)
    assert placement.members["big"].replicas == 3
    assert placement.members["a"].replicas == 1
    assert "1 of 2 replicas placed: the pool's 2 GPUs are full" in placement.members["a"].message


def test_demand_adds_replicas_until_met(opt13):
    one = opt13.mps(1, 96).total_tokens_per_s
    placement = place(
        [PoolMember("a", opt13, 96, 9 * GIB, None, 1, demand_tokens_per_s=2.5 * one)], gpu=H100, max_gpus=8
    )
    assert placement.members["a"].tokens_per_s >= 2.5 * one
    assert placement.members["a"].replicas >= 3


def test_a_gpu_opened_for_a_member_short_of_its_demand_is_closed_when_the_others_hold_it(opt13, opt27):
    """First fit places b's replicas, then a and c next to them lower b's tokens/s below its
    demand, and b grows on a GPU of its own: 4 GPUs. Consolidation moves that GPU's replicas
    onto the others within memory and every cap: 3 GPUs, every demand still met."""
    one13, one27 = opt13.mps(1, 96).total_tokens_per_s, opt27.mps(1, 96).total_tokens_per_s
    members = [
        PoolMember("a", opt13, 96, 10 * GIB, 30.0, 1, demand_tokens_per_s=0.8 * one13),
        PoolMember("b", opt27, 96, 25 * GIB, 40.0, 1, demand_tokens_per_s=2.2 * one27),
        PoolMember("c", opt13, 96, 10 * GIB, 40.0, 1, demand_tokens_per_s=0.8 * one13),
    ]
    placement = place(members, gpu=H100, max_gpus=16)
    assert placement.gpus_used == 3
    for m in members:
        got = placement.members[m.name]
        assert got.tokens_per_s >= m.demand_tokens_per_s and got.itl_mean_ms <= m.itl_cap_ms


def test_running_replicas_are_never_consolidated(opt13):
    members = [member(opt13, n, 1, gib=30) for n in "ab"]
    spread = [
        P.PlacedGPU(index=0, pinned_bytes=30 * GIB, replicas={"a": 1}),
        P.PlacedGPU(1, 30 * GIB, {"b": 1}),
    ]
    placement = place(
        members, gpu=H100, max_gpus=8, previous=spread, previous_revisions={"a": "r1", "b": "r1"}
    )
    assert placement.gpus_used == 2
    assert dict(placement.members["b"].placed) == {1: 1}


def test_a_lowered_max_gpus_gives_up_the_gpus_above_it(opt13):
    members = [member(opt13, n, 1, gib=40) for n in "abc"]
    first = place(members, gpu=H100, max_gpus=8)
    assert first.gpus_used == 3
    revisions = {m.name: m.revision for m in members}
    second = place(members, gpu=H100, max_gpus=1, previous=first.gpus, previous_revisions=revisions)
    assert second.gpus_used == 1 and {g.index for g in second.gpus} == {0}
    assert [n for n, r in second.members.items() if r.message] == ["b", "c"]
    assert "the pool's 1 GPUs are full" in second.members["b"].message


def test_more_co_residents_than_the_model_predicts_are_no_room_not_a_crash(opt13):
    """Exact MVA over 18 different models exceeds MAX_STATES: such a GPU takes no more replicas."""
    members = [member(opt13, f"m{i:02}", 1, gib=1) for i in range(18)]
    placement = place(members, gpu=H100, max_gpus=8, max_clients=48)
    assert all(r.replicas == 1 for r in placement.members.values())
    assert placement.gpus_used >= 2


def test_a_gpu_whose_claim_is_still_being_deleted_is_not_opened_again(opt13):
    """Its pods hold the old claim while they terminate: a new claim of that name would be
    deleted with it, so the replicas go to another GPU, and a full pool counts it as held."""
    placement = place([member(opt13, "a", 1, gib=20)], gpu=H100, max_gpus=8, released=[0])
    assert set(placement.members["a"].placed) == {1}
    full = place([member(opt13, "a", 1, gib=20)], gpu=H100, max_gpus=1, released=[0])
    assert full.gpus_used == 0 and "GPUs are full" in full.members["a"].message
    emptied = place(
        [member(opt13, "b", 1, gib=20)],
        gpu=H100,
        max_gpus=8,
        previous=[P.PlacedGPU(index=0, pinned_bytes=20 * GIB, replicas={"gone": 1})],
    )
    assert set(emptied.members["b"].placed) == {1}  # index 0's claim goes in this very pass
