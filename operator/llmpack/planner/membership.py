"""A GPUPool member's side of its pool, decided: the spec it is served with, what it asks the
pool for, and where the pool's status says its replicas run. Pure.

    member_spec(raw spec, pool object or None) -> raw spec | Refused
    pool_request(decision) -> PoolRequest
    pool_slots(member, pool object) -> (slots, what the pool says)

A member keeps its own spec but the pool's GPUs: the pool's product, node selector and
tolerations replace gpu.*, and sharing becomes MPS through DRA (the pool's claims), so the member
is profiled and advised on the GPU it will share. gpu.count keeps its meaning, GPUs' worth of the
member's own packing: the member asks for gpu.count x its own replicas per GPU, and the pool
places them.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import ValidationError

from llmpack.api.gpupool import GPUPool
from llmpack.api.llmdeployment import PROGRESSING, PoolGPUShare, PoolRequest
from llmpack.planner.decide import ServingDecision
from llmpack.planner.refusal import Refused
from llmpack.render.plan import PoolSlot, stable_hash

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
    sharing.pop("migProfile", None)
    sharing["mode"], sharing["mpsProvider"] = parsed.spec.sharing.mode, parsed.spec.sharing.mps_provider
    spec["sharing"] = sharing
    return spec


def pool_request(decision: ServingDecision) -> PoolRequest:
    """What the member asks its pool for: its replicas (gpu.count x its own replicas per GPU) and
    what one of them is (B_opt, its MPS memory cap, the mean ITL cap it must keep)."""
    plan, rec = decision.plan, decision.recommendation
    memory = plan.mps_pinned_memory_bytes or rec.per_replica_memory_bytes
    cap = rec.latency_cap_ms
    sized = {"batch": rec.b_opt, "memory": memory, "cap": cap}
    return PoolRequest(
        replicas=plan.replicas,
        max_num_seqs=rec.b_opt,
        memory_bytes=memory,
        itl_cap_ms=None if cap is None else round(cap, 3),
        revision=stable_hash(sized)[:12],
    )


def pool_slots(member: str, pool: Object | None) -> tuple[tuple[PoolSlot, ...], list[PoolGPUShare], str]:
    """Where the pool's status places `member`: its slots (GPU, claim, replicas), the same as status
    rows, and what the pool says about it ('' when all its replicas are placed)."""
    status = (pool or {}).get("status") or {}
    slots, shares = [], []
    for gpu in status.get("gpus") or []:
        for row in gpu.get("members") or []:
            if row.get("name") == member and int(row.get("replicas") or 0) > 0:
                slots.append(
                    PoolSlot(gpu=int(gpu["index"]), claim=str(gpu["claim"]), replicas=int(row["replicas"]))
                )
                shares.append(PoolGPUShare(gpu=int(gpu["index"]), replicas=int(row["replicas"])))
    said = next((m for m in status.get("members") or [] if m.get("name") == member), None)
    message = str(said.get("message") or "") if said else "not placed by the pool yet"
    return tuple(slots), shares, message


__all__ = ["member_spec", "pool_name", "pool_request", "pool_slots"]
