"""A GPUPool member's side of its pool, decided: the spec it is served with, what it asks the
pool for, and where the pool's status says its replicas run. Pure.

    member_spec(raw spec, pool object or None) -> raw spec | Refused
    pool_request(decision) -> PoolRequest
    pool_slots(member, pool object) -> (slots, what the pool says)

A member keeps its own spec but the pool's GPUs: the pool's product, node selector and
tolerations replace gpu.*, and its sharing becomes the pool's (MPS through DRA on the pool's
claims, MPS through the device plugin, or MIG), so the member is profiled and advised on the GPU
it will share. Only with DRA does llmpack pin pods to pool GPUs (pool_slots); with the device
plugin or MIG the member's pods ask for their share and the scheduler picks it. gpu.count keeps
its meaning, GPUs' worth of the member's own packing: the member asks for gpu.count x its own
replicas per GPU, and the pool places them.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from llmpack.api.gpupool import GPUPool
from llmpack.api.llmdeployment import PROGRESSING, PoolGPUShare, PoolRequest, RecommendationStatus
from llmpack.hardware import lookup_gpu
from llmpack.hardware.cluster import GPU_PRODUCT_LABEL, MIG_RESOURCE_PREFIX, ClusterFacts, NodeFacts
from llmpack.hardware.gpus import UnknownGPUError
from llmpack.planner.cost import pool_member_cost
from llmpack.planner.decide import ServingDecision
from llmpack.planner.refusal import Refused
from llmpack.render.plan import PoolSlot, ServingPlan, stable_hash

Object = dict[str, Any]


def pool_name(raw_spec: Object) -> str | None:
    """The GPUPool a raw spec names, if any (before the spec is parsed)."""
    ref = raw_spec.get("gpuPoolRef")
    name = ref.get("name") if isinstance(ref, dict) else None
    return name if isinstance(name, str) and name else None


def member_spec(raw_spec: Object, pool: Object | None, *, namespace: str) -> Object | Refused:
    """`raw_spec` with the pool's GPUs in place of its own (see the module docstring); refused
    when the pool is missing or its spec does not parse."""
    name = pool_name(raw_spec)
    if name is None:
        return raw_spec
    if pool is None or pool["metadata"].get("deletionTimestamp"):
        return Refused(
            PROGRESSING,
            "GPUPoolNotFound",
            f"spec.gpuPoolRef names the GPUPool {name}, which namespace {namespace} does not hold: "
            "create it (kind GPUPool, llmpack.io/v1alpha1) or remove spec.gpuPoolRef",
            retryable=True,
            waiting=True,  # applied together, the members may come before their pool
        )
    try:
        parsed = GPUPool.model_validate(pool)
    except ValidationError as err:
        return Refused(
            PROGRESSING, "InvalidGPUPool", f"the GPUPool {name} does not parse: {err.errors()[0]['msg']}"
        )
    spec = copy.deepcopy(raw_spec)
    gpu = dict(spec.get("gpu") or {})
    gpu["product"] = parsed.spec.gpu.product
    gpu["nodeSelector"] = dict(parsed.spec.gpu.node_selector)
    gpu["tolerations"] = [t.to_k8s() for t in parsed.spec.gpu.tolerations]
    spec["gpu"] = gpu
    sharing = dict(spec.get("sharing") or {})
    if parsed.spec.sharing.mode != "mig":
        sharing.pop("migProfile", None)  # a member of a MIG pool may fix its slice
    sharing["mode"], sharing["mpsProvider"] = parsed.spec.sharing.mode, parsed.spec.sharing.mps_provider
    spec["sharing"] = sharing
    return spec


def pool_cluster(cluster: ClusterFacts, pool: Object | None) -> ClusterFacts:
    """The cluster as a member of a MIG pool plans against: where no node offers MIG slices of the
    pool's product yet, one stand-in node offering every profile of it on the pool's GPUs, since
    the pool itself decides the layout the nodes get (its status says which). The member's pods
    then wait for the slices until the layout is applied. Any other pool: the cluster as it is."""
    try:
        parsed = GPUPool.model_validate(pool) if pool is not None else None
    except ValidationError:
        return cluster
    if parsed is None or parsed.spec.sharing.mode != "mig":
        return cluster
    product = parsed.spec.gpu.product
    if cluster.offers(product, parsed.spec.gpu.node_selector).mig_slices:
        return cluster
    try:
        gpu = lookup_gpu(product)
    except UnknownGPUError:
        return cluster
    name = f"gpupool-{parsed.metadata.get('name', '')}-mig-layout"
    stand_in = NodeFacts(
        name=name,
        labels={**parsed.spec.gpu.node_selector, GPU_PRODUCT_LABEL: product},
        allocatable={
            MIG_RESOURCE_PREFIX + p.name: str(p.max_instances * parsed.spec.gpu.max_gpus)
            for p in gpu.mig_profiles
        },
    )
    return dataclasses.replace(cluster, nodes={**cluster.nodes, name: stand_in})


def pool_request(decision: ServingDecision) -> PoolRequest:
    """What the member asks its pool for: its replicas (gpu.count x its own replicas per GPU) and
    what one of them is (B_opt, its MPS memory cap, the mean ITL cap it must keep)."""
    plan, rec = decision.plan, decision.recommendation
    memory = plan.mps_pinned_memory_bytes or rec.per_replica_memory_bytes
    cap = rec.latency_cap_ms
    sized = {"batch": rec.b_opt, "memory": memory, "cap": cap, "mig": plan.mig_profile}
    return PoolRequest(
        replicas=plan.replicas,
        max_num_seqs=rec.b_opt,
        memory_bytes=memory,
        itl_cap_ms=None if cap is None else round(cap, 3),
        mig_profile=plan.mig_profile,
        revision=stable_hash(sized)[:12],
    )


@dataclass(frozen=True)
class PoolPlacement:
    """Where a pool's status puts one member.

    state: `placed` (slots, or shares where the cluster hands out the shares), `hold` (the pool
    placed an earlier revision of the member's replica and has yet to place this one: its pods
    stay as they are), `none` (nothing placed: a new member, one the pool refused, `short`, or
    one that moved here from another pool)."""

    state: Literal["placed", "hold", "none"]
    slots: tuple[PoolSlot, ...] = ()
    shares: list[PoolGPUShare] = field(default_factory=list)
    message: str = ""  # what the pool says of the member, '' when all its replicas are placed
    short: bool = False  # the pool tried and could not place it (full, or over its cap)


def pool_slots(member: str, pool: Object | None, *, revision: str) -> PoolPlacement:
    """Where the pool's status places `member` at `revision` (its PoolRequest's): its slots
    (GPU, claim, replicas; only where the pool has claims) and its replicas per pool GPU as
    status rows."""
    status = (pool or {}).get("status") or {}
    said = next((m for m in status.get("members") or [] if m.get("name") == member), None)
    if said is None or said.get("state") == "Waiting":
        return PoolPlacement("none", message="not placed by the pool yet")
    message = str(said.get("message") or "")
    if said.get("revision") != revision:
        return PoolPlacement(
            "hold", message=f"the pool has yet to place the changed replicas ({message})".replace(" ()", "")
        )
    slots, shares = [], []
    for gpu in status.get("gpus") or []:
        for row in gpu.get("members") or []:
            if row.get("name") == member and int(row.get("replicas") or 0) > 0:
                index, replicas = int(gpu["index"]), int(row["replicas"])
                if gpu.get("claim"):  # MPS through DRA: the pod goes on that GPU's claim
                    slots.append(PoolSlot(gpu=index, claim=str(gpu["claim"]), replicas=replicas))
                shares.append(PoolGPUShare(gpu=index, replicas=replicas))
    if not shares:
        return PoolPlacement("none", message=message, short=True)
    return PoolPlacement("placed", tuple(slots), shares, message)


def member_plan(plan: ServingPlan, placement: PoolPlacement) -> ServingPlan:
    """A member's serving plan on what its pool placed: one pod per slot where the pool has claims
    (none while nothing is placed); where the cluster hands out the shares, its own plan."""
    if not plan.sharing.uses_claim_template:
        return plan
    if placement.state != "placed":
        return plan.model_copy(update={"pool_slots": ()})
    replicas = sum(s.replicas for s in placement.slots)
    return plan.model_copy(update={"pool_slots": placement.slots, "replicas": replicas})


def member_recommendation(
    recommendation: RecommendationStatus, member: str, pool: Object | None
) -> RecommendationStatus:
    """A member's recommendation with its cost as a pool member (planner/cost.py
    pool_member_cost): its memory share of the pool GPUs it sits on, at the tokens/s the pool
    predicts for it. Unchanged without a price or a placement."""
    cost = recommendation.cost
    fractions, tokens_per_s = pool_share(member, pool)
    if cost is None or not fractions:
        return recommendation
    name = str(((pool or {}).get("metadata") or {}).get("name", ""))
    shared = pool_member_cost(alone=cost, shares=fractions, tokens_per_s=tokens_per_s, pool=name)
    return recommendation.model_copy(update={"cost": shared})


def pool_share(member: str, pool: Object | None) -> tuple[list[float], float]:
    """`member`'s share of the memory in use on each pool GPU it sits on, and the tokens/s the
    pool predicts for its replicas together (from the pool's status)."""
    shares, tokens = [], 0.0
    for gpu in ((pool or {}).get("status") or {}).get("gpus") or []:
        used = int(gpu.get("memoryBytes") or 0)
        for row in gpu.get("members") or []:
            if row.get("name") == member and used > 0:
                shares.append(int(row.get("memoryBytes") or 0) / used)
                tokens += float(row.get("predictedTokensPerS") or 0.0)
    return shares, tokens


__all__ = [
    "PoolPlacement",
    "member_spec",
    "pool_cluster",
    "pool_name",
    "pool_request",
    "pool_share",
    "pool_slots",
]
