"""Smoke test of bench.fleet_packing on one model: sizing, GPU counts and fleet-wide packing."""

from __future__ import annotations

import math
import sys
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


def test_small_services_share_gpus_fleet_wide_but_not_per_deployment():
    one = bench.size(bench.Service("tiny", "opt-1.3b", 1_000), GPU)
    assert one.replicas == 1 and one.replicas_per_gpu >= 2
    fleet = [one] * one.replicas_per_gpu
    totals = bench.totals("t", fleet, GPU)
    assert totals.packed_per_deployment == one.replicas_per_gpu  # a GPU each
    assert totals.packed_fleet_wide == 1  # one GPU holds them all
    assert totals.memory_bound_gpus == 1


def test_tables_and_scaled_demand():
    sizing = bench.size(bench.Service("chat", "opt-2.7b", 8_000, slo_itl_ms=30), GPU)
    assert sizing.packed_itl_ms <= 30
    table = bench.service_table([sizing])
    assert isinstance(table, Table) and table.rows[0][0] == "chat"
    doubled = bench.scaled([sizing], 2.0)[0]
    assert doubled.service.demand_tokens_per_s == 16_000 and doubled.replicas >= sizing.replicas
