"""What a GPUPool tells the cluster admin where the cluster hands out the shares: the MIG layout
(and the mig-manager config naming it) and the device plugin's MPS split."""

from __future__ import annotations

import pytest
import yaml

from llmpack.advisor import perfmodel
from llmpack.advisor.loaders import load_paper_profile
from llmpack.hardware import lookup_gpu
from llmpack.planner.pool import GIB, PoolMember
from llmpack.planner.pool_layouts import MIGMember, device_plugin_split, mig_layout, stock_configs

H100 = lookup_gpu("NVIDIA-H100-80GB-HBM3")


@pytest.fixture(scope="module")
def opt13():
    return perfmodel.calibrate(load_paper_profile("opt-1.3b"), gpu=H100)


def mig(perf, name, profile, replicas, cap=None):
    return MIGMember(name, perf, 32, H100.mig_profile(profile), cap, replicas)


def test_uniform_slices_are_a_stock_config_and_mixed_ones_a_custom_mig_parted_config(opt13):
    layout = mig_layout([mig(opt13, "a", "3g.40gb", 4)], gpu=H100, max_gpus=4, pool="p")
    assert (layout.config, layout.mig_parted) == ("all-3g.40gb", None)
    assert layout.placement.gpus_used == 2
    mixed = mig_layout(
        [mig(opt13, "a", "3g.40gb", 1), mig(opt13, "b", "2g.20gb", 1), mig(opt13, "c", "1g.10gb", 2)],
        gpu=H100,
        max_gpus=4,
        pool="p",
    )
    assert mixed.placement.gpus_used == 1
    assert mixed.slices[0] == {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}
    assert mixed.config == "all-balanced"  # the GPU Operator's own name for exactly this layout
    odd = mig_layout(
        [mig(opt13, "a", "4g.40gb", 1), mig(opt13, "c", "1g.10gb", 3)], gpu=H100, max_gpus=4, pool="p"
    )
    assert odd.config == "llmpack-p"
    parted = yaml.safe_load(odd.mig_parted)
    assert parted["mig-configs"]["llmpack-p"] == [
        {"devices": [0], "mig-enabled": True, "mig-devices": {"1g.10gb": 3, "4g.40gb": 1}}
    ]


def test_a_layout_respects_compute_and_memory_slices_and_instance_limits(opt13):
    layout = mig_layout(
        [mig(opt13, "a", "4g.40gb", 2), mig(opt13, "b", "3g.40gb", 2)], gpu=H100, max_gpus=4, pool="p"
    )
    for counts in layout.slices.values():
        profiles = [(H100.mig_profile(p), c) for p, c in counts.items()]
        assert sum(p.compute_slices * c for p, c in profiles) <= 7
        assert sum(p.memory_slices * c for p, c in profiles) <= 8
    assert layout.placement.gpus_used == 2  # one 4g and one 3g on each


def test_a_slice_that_breaks_the_members_latency_cap_is_refused_with_the_figure(opt13):
    alone = opt13.mig(H100.mig_profile("1g.10gb"), 32).itl_mean_ms
    layout = mig_layout([mig(opt13, "a", "1g.10gb", 1, cap=alone * 0.9)], gpu=H100, max_gpus=1, pool="p")
    message = layout.placement.members["a"].message
    assert f"predicted at {alone:.1f} ms mean ITL, above its cap" in message
    assert "set sharing.migProfile: 2g.20gb on the member" in message  # the next slice up serves it
    assert layout.placement.gpus_used == 0


def test_the_device_plugin_split_is_the_one_needing_fewest_gpus_with_every_replica_in_a_slice(opt13):
    members = [
        PoolMember("a", opt13, 96, 24 * GIB, None, 2),
        PoolMember("b", opt13, 96, 12 * GIB, None, 3),
    ]
    split = device_plugin_split(members, gpu=H100, max_gpus=8)
    slice_bytes = H100.reported_memory_bytes // split.replicas_per_gpu
    assert slice_bytes >= 24 * GIB  # the largest replica fits one slice
    assert split.replicas_per_gpu == 3 and split.placement.gpus_used == 2
    assert all(sum(g.replicas.values()) <= 3 for g in split.placement.gpus)


def test_the_stock_configs_are_the_gpu_operators_names():
    configs = stock_configs(H100)
    assert configs["all-1g.10gb"] == {"1g.10gb": 7}
    assert configs["all-balanced"] == {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}
