"""One pass over one GPUPool, decided: what the controller observed in, one PoolOutcome out. Pure.

    decide_pool(pool=..., members=..., claims=...) -> PoolOutcome

The members state what they need in their own status (`status.pool.request`: replicas, B_opt,
one replica's memory cap, its latency cap; written by each member's own pass from its own
profile, planner/reconcile.py); the pool's pass places them all at once (planner/pool.py) with
each member's performance model calibrated on its profile, and its outcome is the pool's
ResourceClaims (one per GPU in use), the stale claims to delete and the pool's status, which
every member's next pass reads to render its pods (one per pool GPU it was placed on).

A member without a request yet (still profiling, or refused) is listed as waiting and takes no
room; a member whose profile the cache does not hold cannot be predicted and waits likewise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from llmpack.advisor import perfmodel
from llmpack.advisor.errors import AdvisorError
from llmpack.api.gpupool import GPUPool, GPUPoolStatus, PoolGPU, PoolGPUMember, PoolMemberStatus
from llmpack.api.llmdeployment import PoolRequest
from llmpack.api.profile import Profile
from llmpack.hardware import GPU, lookup_gpu
from llmpack.hardware.gpus import UnknownGPUError
from llmpack.planner.conditions import set_condition
from llmpack.planner.outcome import ObjectRef
from llmpack.planner.pool import PlacedGPU, Placement, PoolMember, place
from llmpack.planner.pool_layouts import MIGLayout, MIGMember, device_plugin_split, mig_layout
from llmpack.render.plan import OwnerRef
from llmpack.render.pool import pool_claim, pool_claim_name

GIB = 1 << 30
PLACED = "Placed"
BASIS = (
    "predicted by the performance model from each member's own profile; replicas of different models "
    "sharing one GPU are predicted without any measurement of such co-location"
)


@dataclass(frozen=True)
class MemberSeen:
    """One member LLMDeployment as the pool's pass observed it."""

    name: str
    request: PoolRequest | None  # its status.pool.request; None: not sized yet
    profile: Profile | None  # the profile its request rests on; None: not in the cache
    waiting: str = ""  # why it has no request (its phase and message)


@dataclass
class PoolOutcome:
    status: GPUPoolStatus
    apply: list[dict[str, Any]] = field(default_factory=list)
    delete: list[ObjectRef] = field(default_factory=list)


def decide_pool(
    *,
    pool: GPUPool,
    namespace: str,
    uid: str,
    members: Sequence[MemberSeen],
    claims: Mapping[str, int | None],
    now: str,
) -> PoolOutcome:
    """The placement of `pool`'s members, its claims and its status (`claims`: the ResourceClaims
    the pool owns now, live or being deleted, each with the pool GPU it stands for)."""
    name = str(pool.metadata.get("name", ""))
    previous = pool.status or GPUPoolStatus()
    status = GPUPoolStatus(
        observed_generation=pool.metadata.get("generation"),
        rebalanced=pool.spec.rebalance,
        conditions=list(previous.conditions),
        basis=BASIS,
    )
    try:
        gpu = lookup_gpu(pool.spec.gpu.product)
    except UnknownGPUError as err:
        return degraded(pool, "UnknownGPU", f"spec.gpu.product: {err}", now=now)
    try:
        return _decide(pool, name, namespace, uid, members, claims, gpu, status, previous, now)
    except (AdvisorError, ValueError) as err:  # the model cannot predict this pool: keep what runs
        return degraded(pool, "PlacementFailed", f"cannot place the members: {err}", now=now)


def degraded(pool: GPUPool, reason: str, message: str, *, now: str) -> PoolOutcome:
    """A pass that cannot place: the previous placement stays as it was (members keep serving on
    it, and it is what a later pass starts from), with the reason in the status."""
    previous = pool.status or GPUPoolStatus()
    status = previous.model_copy(deep=True)
    status.phase, status.message = "Degraded", message
    set_condition(
        status, PLACED, False, reason, message[:1000], generation=pool.metadata.get("generation"), now=now
    )
    return PoolOutcome(status=status)


def _decide(
    pool: GPUPool,
    name: str,
    namespace: str,
    uid: str,
    members: Sequence[MemberSeen],
    claims: Mapping[str, int | None],
    gpu: GPU,
    status: GPUPoolStatus,
    previous: GPUPoolStatus,
    now: str,
) -> PoolOutcome:
    generation = pool.metadata.get("generation")
    placed_members, waiting = _members(members, gpu)
    profiles = {m.name: m.request.mig_profile for m in members if m.request is not None}
    rebalance = (pool.spec.rebalance or None) != (previous.rebalanced or None)
    sharing = pool.spec.sharing
    desired: list[dict[str, Any]] = []
    slices: Mapping[int, Mapping[str, int]] = {}
    if sharing.mode == "mig":
        layout = _mig(pool, name, gpu, placed_members, profiles, waiting, previous, rebalance)
        placement, slices = layout.placement, layout.slices
        status.mig_config, status.mig_parted = layout.config, layout.mig_parted
        status.node_configuration = (
            f"label the pool's nodes nvidia.com/mig.config={layout.config}"
            + (
                " after adding this config to the GPU Operator's mig-parted ConfigMap"
                if layout.mig_parted
                else ""
            )
            + " (the GPU Operator's mig-manager then splits the GPUs); the device plugin's mixed strategy "
            "advertises the slices as nvidia.com/mig-<profile>"
        )
    elif sharing.mps_provider == "devicePlugin":
        split = device_plugin_split(list(placed_members.values()), gpu=gpu, max_gpus=pool.spec.gpu.max_gpus)
        placement = split.placement
        status.device_plugin_replicas = split.replicas_per_gpu
        status.node_configuration = (
            f"configure the device plugin's MPS sharing with replicas: {split.replicas_per_gpu} on the "
            f"pool's nodes (node label nvidia.com/gpu.replicas={split.replicas_per_gpu}): slices of "
            f"{split.slice_bytes / GIB:.2f} GiB, one per replica; the "
            "scheduler hands the slices out, so the placement here is the plan"
        )
    else:
        placement = place(
            list(placed_members.values()),
            gpu=gpu,
            max_gpus=pool.spec.gpu.max_gpus,
            max_clients=sharing.max_replicas_per_gpu,
            previous=_previous(previous),
            previous_revisions={m.name: m.revision for m in previous.members},
            rebalance=rebalance,
            released=_released(previous, claims),
        )
        owner = OwnerRef(api_version=pool.api_version, kind=pool.kind, name=name, uid=uid)
        desired = [
            pool_claim(pool=name, namespace=namespace, owner=owner, gpu=g.index, pinned_bytes=g.pinned_bytes)
            for g in placement.gpus
        ]
    keep = {c["metadata"]["name"] for c in desired}
    outcome = PoolOutcome(
        status=status,
        apply=desired,
        delete=[ObjectRef("ResourceClaim", namespace, c) for c in sorted(claims) if c not in keep],
    )
    _status(
        status,
        name,
        placement,
        placed_members,
        waiting,
        gpu,
        slices,
        claims=not sharing_elsewhere(pool),
        profiles=profiles,
    )
    short = any(m.message for m in status.members if m.name in placed_members)
    set_condition(
        status,
        PLACED,
        not short,
        "MembersDoNotFit" if short else "AllPlaced",
        status.message[:1000],
        generation=generation,
        now=now,
    )
    return outcome


def _released(previous: GPUPoolStatus, claims: Mapping[str, int | None]) -> set[int]:
    """GPUs whose claim still exists though the placement dropped it (deleted, its pods still
    holding it): a claim of the same name made now would go with the old one."""
    placed = {g.claim for g in previous.gpus}
    return {index for claim, index in claims.items() if claim not in placed and index is not None}


def sharing_elsewhere(pool: GPUPool) -> bool:
    """Whether the cluster, not the pool's claims, hands out the shares (mig, device plugin)."""
    return pool.spec.sharing.mode == "mig" or pool.spec.sharing.mps_provider == "devicePlugin"


def _mig(
    pool: GPUPool,
    name: str,
    gpu: GPU,
    members: dict[str, PoolMember],
    profiles: Mapping[str, str | None],
    waiting: dict[str, str],
    previous: GPUPoolStatus,
    rebalance: bool,
) -> MIGLayout:
    """The MIG layout of the members whose request names a profile of the pool's GPU; the others
    wait (moved to `waiting`, out of `members`)."""
    sized = []
    for member_name, member in list(members.items()):
        try:
            profile = gpu.mig_profile(profiles.get(member_name) or "")
        except ValueError:
            waiting[member_name] = "not advised on a MIG slice of the pool's GPU yet"
            del members[member_name]
            continue
        members[member_name] = replace(member, replica_bytes=profile.memory_bytes)
        sized.append(
            MIGMember(
                name=member_name,
                perf=member.perf,
                batch=member.batch,
                profile=profile,
                itl_cap_ms=member.itl_cap_ms,
                replicas=member.replicas,
            )
        )
    return mig_layout(
        sized,
        gpu=gpu,
        max_gpus=pool.spec.gpu.max_gpus,
        pool=name,
        previous=() if rebalance else _previous(previous),
        previous_profiles=_previous_profiles(previous),
    )


def _previous_profiles(status: GPUPoolStatus) -> dict[str, str]:
    """Each member's MIG profile in the previous layout, from the GPUs' slices and members."""
    found: dict[str, str] = {}
    for g in status.gpus:
        for m in g.members:
            if g.mig_devices and m.mig_profile:
                found[m.name] = m.mig_profile
    return found


def _members(members: Sequence[MemberSeen], gpu: GPU) -> tuple[dict[str, PoolMember], dict[str, str]]:
    """The members the placement can size, and why each other one waits."""
    sized: dict[str, PoolMember] = {}
    waiting: dict[str, str] = {}
    for seen in sorted(members, key=lambda m: m.name):
        request = seen.request
        if request is None:
            waiting[seen.name] = seen.waiting or "not sized yet (profiling or advising)"
            continue
        if seen.profile is None:
            waiting[seen.name] = "its profile is not in the profile cache yet"
            continue
        try:
            model = perfmodel.calibrate(seen.profile, gpu=gpu)
        except AdvisorError as err:
            waiting[seen.name] = f"its profile cannot be calibrated: {err}"
            continue
        sized[seen.name] = PoolMember(
            name=seen.name,
            perf=model,
            batch=request.max_num_seqs,
            replica_bytes=request.memory_bytes,
            itl_cap_ms=request.itl_cap_ms,
            replicas=request.replicas,
            revision=request.revision,
        )
    return sized, waiting


def _previous(status: GPUPoolStatus) -> list[PlacedGPU]:
    return [
        PlacedGPU(
            index=g.index,
            pinned_bytes=g.pinned_memory_bytes,
            replicas={m.name: m.replicas for m in g.members},
        )
        for g in status.gpus
    ]


def _status(
    status: GPUPoolStatus,
    pool: str,
    placement: Placement,
    members: Mapping[str, PoolMember],
    waiting: Mapping[str, str],
    gpu: GPU,
    slices: Mapping[int, Mapping[str, int]],
    *,
    claims: bool,
    profiles: Mapping[str, str | None],
) -> None:
    for placed in placement.gpus:
        rows = []
        for member, replicas in placed.replicas.items():
            prediction = placement.predictions[(placed.index, member)]
            rows.append(
                PoolGPUMember(
                    name=member,
                    replicas=replicas,
                    memory_bytes=members[member].replica_bytes * replicas,
                    predicted_itl_mean_ms=round(prediction.itl_mean_ms, 2),
                    predicted_tokens_per_s=round(prediction.total_tokens_per_s, 1),
                    mig_profile=profiles.get(member) if slices else None,
                )
            )
        status.gpus.append(
            PoolGPU(
                index=placed.index,
                claim=pool_claim_name(pool, placed.index, placed.pinned_bytes) if claims else None,
                pinned_memory_bytes=placed.pinned_bytes if claims else 0,
                memory_bytes=sum(r.memory_bytes for r in rows),
                members=rows,
                mig_devices=dict(slices[placed.index]) if slices else None,
            )
        )
    short = []
    for name, result in placement.members.items():
        sized = members[name]
        status.members.append(
            PoolMemberStatus(
                name=name,
                replicas=sized.replicas,
                placed=result.replicas,
                revision=sized.revision,
                state="Short" if result.message else "Placed",
                message=result.message,
            )
        )
        if result.message:
            short.append(f"{name}: {result.message}")
    for name, why in waiting.items():
        status.members.append(
            PoolMemberStatus(name=name, replicas=0, placed=0, revision="", state="Waiting", message=why)
        )
    status.members.sort(key=lambda m: m.name)
    status.gpus_used = placement.gpus_used
    status.memory_bound = placement.memory_bound(members, gpu.usable_memory_bytes) if members else 0
    room = placement.room_bytes or gpu.usable_memory_bytes
    status.placement = (
        "; ".join(
            f"gpu{g.index}: "
            + ", ".join(f"{m.name} x{m.replicas}" for m in g.members)
            + (f" [{', '.join(f'{c}x{p}' for p, c in g.mig_devices.items())}]" if g.mig_devices else "")
            + f" ({g.memory_bytes / GIB:.1f}/{room / GIB:.1f} GiB)"
            for g in status.gpus
        )
        or "no replicas placed"
    )
    total = sum(m.replicas for m in members.values())
    placed_count = sum(r.replicas for r in placement.members.values())
    status.phase = "Degraded" if short else ("Ready" if members else "Pending")
    status.message = (
        f"{placed_count}/{total} replicas of {len(members)} members on {status.gpus_used} GPUs "
        f"(memory bound {status.memory_bound})"
        + (f"; {'; '.join(short)}" if short else "")
        + (f"; waiting: {', '.join(sorted(waiting))}" if waiting else "")
    )


def gpus_worth(placed_replicas: int, replicas_per_gpu: int) -> int:
    """A member's placed replicas in GPUs' worth of its own packing (its scale's status)."""
    return math.ceil(placed_replicas / max(replicas_per_gpu, 1))


__all__ = ["BASIS", "MemberSeen", "PoolOutcome", "decide_pool", "gpus_worth"]
