"""The node configurations a GPUPool needs where the cluster, not llmpack, hands out the shares:
the MIG layout (mode mig) and the device plugin's MPS split (mps with devicePlugin). Pure.

    mig_layout(members, gpu=..., max_gpus=..., previous=...) -> MIGLayout
    device_plugin_split(members, gpu=..., max_gpus=...) -> DevicePluginSplit

MIG. Each member replica needs one slice of its own profile (the member's MIG decision: the
smallest profile holding one replica). Slices are laid out on GPUs first-fit decreasing by compute
slices, a GPU taking a slice while its compute slices (7) and memory slices (8) last and the
profile's instance limit holds (NVIDIA MIG user guide, "Supported MIG Profiles"; the finer
placement rules, e.g. which start slices a 3g profile may take, are not checked). Slices are
isolated, so a replica's prediction is its slice's alone (PerfModel.mig) and co-location does not
change it. The layout is said as the `nvidia.com/mig.config` label value: a stock config of the
GPU Operator's mig-manager (`all-<profile>`, `all-balanced`) where every GPU matches one, else a
custom mig-parted config (`llmpack-<pool>`) with one entry per pool GPU, pool GPU i being device i
of the pool's nodes, in order.

Device plugin. The plugin splits every GPU into N equal MPS slices (its sharing config, label
nvidia.com/gpu.replicas) and pins each client to total / N; a member's replica is one pod on one
slice (hardware/sharing.py MPSThroughDevicePlugin), so N is at most the GPU's memory over the
largest replica. For each such N up to MAX_DEVICE_PLUGIN_REPLICAS the members are placed by
planner/pool.py (each replica one slice, N per GPU, every member within its ITL cap by the mixed
co-location model) and the N with the fewest GPUs wins (then the most replicas placed, then the
smaller N). Limits: the scheduler
picks the GPU a pod's slices come from, so the placement is the plan, not a guarantee; the
plugin's per-client thread limit (100/N %) is not in the performance model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from llmpack.advisor.perfmodel import PerfModel
from llmpack.hardware import GPU, MIGProfile
from llmpack.hardware.gpus import COMPUTE_SLICES_PER_GPU, MEMORY_SLICES_PER_GPU
from llmpack.planner.pool import GIB, MemberResult, PlacedGPU, Placement, PoolMember, member_results, place

MIB = 1 << 20
MAX_DEVICE_PLUGIN_REPLICAS = 16


@dataclass(frozen=True)
class MIGMember:
    name: str
    perf: PerfModel  # on the pool's GPU product
    batch: int
    profile: MIGProfile
    itl_cap_ms: float | None
    replicas: int


@dataclass(frozen=True)
class MIGLayout:
    placement: Placement  # replicas per GPU (one slice each); pinned_bytes unused (0)
    slices: Mapping[int, Mapping[str, int]]  # GPU index -> MIG profile -> count
    config: str  # the nvidia.com/mig.config label value
    mig_parted: str | None  # the custom config's YAML, None for a stock config


def mig_layout(
    members: Sequence[MIGMember],
    *,
    gpu: GPU,
    max_gpus: int,
    pool: str,
    previous: Sequence[PlacedGPU] = (),
    previous_profiles: Mapping[str, str] | None = None,
) -> MIGLayout:
    """The slices of `members` on at most `max_gpus` GPUs (see the module docstring); a member
    keeps the slices it had while its profile is unchanged."""
    by_name = {m.name: m for m in members}
    gpus: dict[int, dict[str, int]] = {}
    for placed in previous:
        kept = {
            n: c
            for n, c in placed.replicas.items()
            if n in by_name and (previous_profiles or {}).get(n) == by_name[n].profile.name
        }
        if kept:
            gpus[placed.index] = kept
    messages: dict[str, str] = {}
    for member in sorted(members, key=lambda m: (-m.profile.compute_slices, m.name)):
        _trim(gpus, member)
        alone = member.perf.mig(member.profile, member.batch)
        if member.itl_cap_ms is not None and alone.itl_mean_ms > member.itl_cap_ms:
            messages[member.name] = (
                f"one replica on a {member.profile.name} slice is predicted at {alone.itl_mean_ms:.1f} ms "
                f"mean ITL, above its cap of {member.itl_cap_ms:g} ms" + _larger_slice(member, gpu)
            )
            continue
        while sum(g.get(member.name, 0) for g in gpus.values()) < member.replicas:
            index = next((i for i in sorted(gpus) if _fits(gpus[i], member, by_name)), None)
            if index is None:
                if len(gpus) >= max_gpus:
                    have = sum(g.get(member.name, 0) for g in gpus.values())
                    messages[member.name] = (
                        f"{have} of {member.replicas} replicas placed: the pool's {max_gpus} GPUs have no "
                        f"{member.profile.name} slice left (raise spec.gpu.maxGPUs)"
                    )
                    break
                index = min(i for i in range(len(gpus) + 1) if i not in gpus)
                gpus[index] = {}
            gpus[index][member.name] = gpus[index].get(member.name, 0) + 1
    slices = {i: _count(g, by_name) for i, g in sorted(gpus.items()) if g}
    placement = _placement(gpus, by_name, messages)
    config, parted = _config(slices, gpu, pool)
    return MIGLayout(placement=placement, slices=slices, config=config, mig_parted=parted)


def _larger_slice(member: MIGMember, gpu: GPU) -> str:
    """What would serve `member` within its cap: the smallest larger slice predicted within it."""
    cap = member.itl_cap_ms
    larger = sorted(
        (
            p
            for p in gpu.mig_profiles
            if p.compute_slices > member.profile.compute_slices and not p.name.endswith(".me")
        ),
        key=lambda p: (p.compute_slices, p.memory_bytes),
    )
    for profile in larger:
        itl = member.perf.mig(profile, member.batch).itl_mean_ms
        if cap is not None and itl <= cap:
            return (
                f"; a {profile.name} slice is predicted at {itl:.1f} ms: set sharing.migProfile: "
                f"{profile.name} on the member (or raise its slo.itlMeanMs)"
            )
    return "; no slice of this GPU is predicted within it: raise its slo.itlMeanMs"


def _trim(gpus: dict[int, dict[str, int]], member: MIGMember) -> None:
    excess = sum(g.get(member.name, 0) for g in gpus.values()) - member.replicas
    for index in sorted(gpus, reverse=True):
        if excess <= 0:
            break
        take = min(gpus[index].get(member.name, 0), excess)
        if take:
            gpus[index][member.name] -= take
            excess -= take
            if not gpus[index][member.name]:
                del gpus[index][member.name]


def _fits(replicas: Mapping[str, int], member: MIGMember, by_name: Mapping[str, MIGMember]) -> bool:
    profiles = [(by_name[n].profile, c) for n, c in replicas.items()] + [(member.profile, 1)]
    compute = sum(p.compute_slices * c for p, c in profiles)
    memory = sum(p.memory_slices * c for p, c in profiles)
    same = sum(c for p, c in profiles if p.name == member.profile.name)
    return (
        compute <= COMPUTE_SLICES_PER_GPU
        and memory <= MEMORY_SLICES_PER_GPU
        and same <= member.profile.max_instances
    )


def _count(replicas: Mapping[str, int], by_name: Mapping[str, MIGMember]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, count in replicas.items():
        profile = by_name[name].profile.name
        counts[profile] = counts.get(profile, 0) + count
    return dict(sorted(counts.items()))


def _placement(
    gpus: Mapping[int, Mapping[str, int]], by_name: Mapping[str, MIGMember], messages: Mapping[str, str]
) -> Placement:
    placed = tuple(
        PlacedGPU(index=i, pinned_bytes=0, replicas=dict(sorted(g.items())))
        for i, g in sorted(gpus.items())
        if g
    )
    predictions = {}
    for g in placed:
        for name, count in g.replicas.items():
            member = by_name[name]
            predictions[(g.index, name)] = member.perf.mig(member.profile, member.batch, count)
    wanted = {name: member.replicas for name, member in by_name.items()}
    results = member_results(wanted, placed, predictions, messages)
    return Placement(gpus=placed, members=results, predictions=predictions, room_bytes=0)


def _config(slices: Mapping[int, Mapping[str, int]], gpu: GPU, pool: str) -> tuple[str, str | None]:
    """A stock mig-manager config where every GPU is one, else a custom one (see the docstring)."""
    layouts = {tuple(sorted(s.items())) for s in slices.values()}
    stock = {tuple(sorted(v.items())): k for k, v in stock_configs(gpu).items()}
    if len(layouts) == 1 and (only := next(iter(layouts))) in stock:
        return stock[only], None
    name = f"llmpack-{pool}"
    lines = ["version: v1", "mig-configs:", f"  {name}:"]
    for index, counts in sorted(slices.items()):
        devices = ", ".join(f'"{p}": {c}' for p, c in sorted(counts.items()))
        lines += [f"    - devices: [{index}]", "      mig-enabled: true", f"      mig-devices: {{{devices}}}"]
    return name, "\n".join(lines) + "\n"


def stock_configs(gpu: GPU) -> dict[str, dict[str, int]]:
    """The GPU Operator's default mig-parted configs for this GPU: `all-<profile>` (as many of one
    profile as fit) and `all-balanced` (two of the smallest 1g, one 2g, one 3g; FACTS.md 4.1)."""
    configs = {
        f"all-{p.name}": {p.name: p.max_instances} for p in gpu.mig_profiles if not p.name.endswith(".me")
    }
    by_compute: dict[int, MIGProfile] = {}
    for p in gpu.mig_profiles:
        if not p.name.endswith(".me") and p.compute_slices not in by_compute:
            by_compute[p.compute_slices] = p  # the first listed of each size: the smallest memory
    if all(k in by_compute for k in (1, 2, 3)):
        configs["all-balanced"] = {by_compute[1].name: 2, by_compute[2].name: 1, by_compute[3].name: 1}
    return configs


# -- the device plugin's MPS split -------------------------------------------------------------------


@dataclass(frozen=True)
class DevicePluginSplit:
    replicas_per_gpu: int  # N: the plugin's MPS slices per GPU (nvidia.com/gpu.replicas)
    slice_bytes: int
    placement: Placement


def device_plugin_split(members: Sequence[PoolMember], *, gpu: GPU, max_gpus: int) -> DevicePluginSplit:
    """The split N that places `members` (replica_bytes: one replica's memory) on the fewest GPUs,
    one slice per replica (see the module docstring). A member whose replica is larger than the
    whole GPU is not placed (its message says so); the others are."""
    whole = gpu.reported_memory_bytes // MIB * MIB
    too_large = {m.name for m in members if m.replica_bytes > whole}
    fitting = [m for m in members if m.name not in too_large]
    best: tuple[tuple[int, int, int], DevicePluginSplit] | None = None
    for split in range(1, MAX_DEVICE_PLUGIN_REPLICAS + 1):
        slice_bytes = gpu.reported_memory_bytes // split // MIB * MIB
        if any(m.replica_bytes > slice_bytes for m in fitting):
            continue  # a replica larger than a slice: the plugin's client limit would starve it
        sized = [replace(m, replica_bytes=slice_bytes) for m in fitting]
        placement = place(
            sized, gpu=gpu, max_gpus=max_gpus, max_clients=split, room=split * slice_bytes, claims=False
        )
        missing = sum(r.wanted - r.replicas for r in placement.members.values() if r.replicas < r.wanted)
        key = (missing, placement.gpus_used, split)
        if best is None or key < best[0]:
            best = (
                key,
                DevicePluginSplit(replicas_per_gpu=split, slice_bytes=slice_bytes, placement=placement),
            )
    assert best is not None  # N = 1 holds every fitting replica
    chosen = best[1]
    if too_large:
        refused = {
            m.name: MemberResult(
                name=m.name,
                wanted=m.replicas,
                placed={},
                tokens_per_s=0.0,
                itl_mean_ms=None,
                message=f"one replica's {m.replica_bytes / GIB:.2f} GiB exceed a whole {gpu.product}",
            )
            for m in members
            if m.name in too_large
        }
        placement = replace(chosen.placement, members={**chosen.placement.members, **refused})
        chosen = replace(chosen, placement=placement)
    return chosen


__all__ = [
    "MAX_DEVICE_PLUGIN_REPLICAS",
    "DevicePluginSplit",
    "MIGLayout",
    "MIGMember",
    "device_plugin_split",
    "mig_layout",
    "stock_configs",
]
