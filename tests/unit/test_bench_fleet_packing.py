"""bench.fleet_packing: services sized as the operator would, and the pool's GPUs taken from the
operator's own placement (llmpack.planner.pool.place), against per-deployment packing and the bound."""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from bench import fleet_packing as bench  # noqa: E402
from bench.common import Table  # noqa: E402

from llmpack.hardware import lookup_gpu  # noqa: E402

GPU = lookup_gpu(bench.TARGET_GPU)


def test_one_opt_1_3b_service_is_sized_as_the_operator_would():
    sizing = bench.size(bench.Service("chat", "opt-1.3b", 30_000), GPU)
    assert sizing.b_opt == 96
    assert 1 <= sizing.replicas_per_gpu <= sizing.memory_fit <= bench.MAX_REPLICAS_PER_GPU
    per_replica = sizing.packed_tokens_per_s_per_gpu / sizing.replicas_per_gpu
    assert sizing.replicas == math.ceil(30_000 / per_replica)
    assert sizing.gpus_packed == math.ceil(sizing.replicas / sizing.replicas_per_gpu)
    assert sizing.gpus_exclusive == math.ceil(30_000 / sizing.exclusive_tokens_per_s)
    # packing pays for OPT-1.3B: fewer GPUs than one default instance per GPU
    assert sizing.gpus_packed <= sizing.gpus_exclusive
    # no SLO: the pool member's cap is the advisor's latency cap; one replica at least, then demand
    member = sizing.pool_member()
    assert sizing.itl_cap_ms is not None and member.itl_cap_ms == sizing.itl_cap_ms
    assert (member.name, member.batch, member.replicas) == ("chat", 96, 1)
    assert member.replica_bytes == sizing.per_replica_bytes and member.demand_tokens_per_s == 30_000


def test_an_slo_is_the_pool_members_cap():
    sizing = bench.size(bench.Service("chat", "opt-2.7b", 8_000, slo_itl_ms=30), GPU)
    assert sizing.itl_cap_ms == 30 and sizing.pool_member().itl_cap_ms == 30
    assert sizing.packed_itl_ms <= 30


def test_small_services_share_one_pool_gpu_but_not_per_deployment():
    one = bench.size(bench.Service("tiny", "opt-1.3b", 1_000), GPU)
    assert one.replicas == 1 and one.replicas_per_gpu >= 2
    fleet = [
        replace(one, service=replace(one.service, name=f"tiny-{i}")) for i in range(one.replicas_per_gpu)
    ]
    totals = bench.totals("t", fleet, GPU)
    assert totals.packed_per_deployment == one.replicas_per_gpu  # a GPU each
    assert totals.pool_gpus == 1  # the pool puts them all on one GPU
    assert totals.memory_bound_gpus == 1
    assert totals.pool.replicas == len(fleet) and totals.pool.all_met


def test_the_pool_on_the_fleet_keeps_caps_and_demand_and_stays_between_bound_and_per_deployment():
    sizings = [bench.size(s, GPU) for s in bench.FLEET]
    rows = bench.scale_rows(sizings, GPU, (0.25, 1.0))
    for factor, by_label in rows.items():
        for label, t in by_label.items():
            pool = t.pool
            # the bound is Placement.memory_bound over the GPU's usable memory, of the replicas placed
            caps = sum(
                s.per_replica_bytes * pool.placement.members[s.service.name].replicas
                for s in sizings
                if s.service.name in pool.members
            )
            assert t.memory_bound_gpus == math.ceil(caps / GPU.usable_memory_bytes), (factor, label)
            assert t.memory_bound_gpus <= t.pool_gpus <= t.packed_per_deployment, (factor, label)
            assert t.pool_gpus < t.exclusive, (factor, label)
            for c in pool.checks:
                assert c.itl_mean_ms is not None and c.itl_cap_ms is not None
                assert c.itl_mean_ms <= c.itl_cap_ms + 1e-9, (factor, c)
                assert c.tokens_per_s >= c.demand_tokens_per_s * (1 - 1e-9), (factor, c)
                assert c.met and not c.message
            # every GPU's replicas fit in the room the placement leaves for their caps
            for g in pool.placement.gpus:
                assert pool.placement.memory_bytes(g.index, pool.members) <= pool.placement.room_bytes
    # more demand never takes fewer pool GPUs
    assert rows[0.25]["whole fleet"].pool_gpus <= rows[1.0]["whole fleet"].pool_gpus


def test_a_pool_too_small_is_reported_as_not_met():
    sizing = bench.size(bench.Service("big", "opt-1.3b", 200_000), GPU)
    pool = bench.run_pool([sizing], GPU, max_gpus=1)
    assert pool.gpus == 1 and not pool.all_met
    (miss,) = pool.misses()
    assert miss.startswith("big:") and "GPUs are full" in miss


def test_run_prints_the_tables_and_the_goals():
    result = bench.run()
    assert all(isinstance(t, Table) for t in result.tables)
    service, totals, scales, gpus = result.tables
    assert [r[0] for r in service.rows] == [s.name for s in bench.FLEET]
    assert totals.rows[-1][0] == "whole fleet"
    assert [(r[0], r[1]) for r in scales.rows[:2]] == [("0.25", "OPT-1.3B + 2.7B"), ("0.25", "whole fleet")]
    assert {r[0] for r in scales.rows} == {f"{f:g}" for f in bench.DEMAND_SCALES}
    assert all(r[-1] in ("met", "NOT met") for r in scales.rows)
    goals = [n for n in result.notes if n.startswith("Goal:")]
    assert len(goals) == 4 and all(": met" in g or ": NOT met" in g for g in goals)
    # the pool table's GPUs are the whole fleet's pool at 1x
    whole = next(r for r in totals.rows if r[0] == "whole fleet")
    assert len(gpus.rows) == int(whole[5])
