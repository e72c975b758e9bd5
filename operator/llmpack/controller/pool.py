"""One level-triggered pass over one GPUPool: observe, decide once (planner/pool_pass.py), act.

    observe   the pool, its members (the LLMDeployments of its namespace whose spec.gpuPoolRef
              names it, from the operator's watch of them), each member's profile (the profile
              cache, by the key in its status) and the ResourceClaims the pool owns (watch cache)
    decide    planner.pool_pass.decide_pool: the placement, the claims, the status
    act       apply the claims, delete the stale ones (controller/act.py's Actor: an apply is
              skipped while the watch shows it as applied; a refusal becomes the status)

The members' own passes read the pool's status to render their pods; the operator queues them
whenever the pool's status changes, and queues the pool whenever a member changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pydantic import ValidationError

from llmpack.api.gpupool import GPUPool
from llmpack.api.llmdeployment import PoolRequest
from llmpack.controller.act import Actor
from llmpack.controller.cache import ProfileCache
from llmpack.controller.observe import now
from llmpack.planner.membership import pool_name
from llmpack.planner.pool_pass import MemberSeen, decide_pool
from llmpack.render.pool import claim_gpu, pool_labels
from llmpack.runtime.client import Client
from llmpack.runtime.store import Store

Object = dict[str, Any]


class PoolReconciler:
    def __init__(
        self,
        *,
        kube: Client,
        store: Store,
        cache: ProfileCache,
        members: Callable[[str], Iterable[Object]],
    ):
        self.store = store
        self.cache = cache
        self.members = members  # namespace -> the LLMDeployments the operator holds there
        self.actor = Actor(kube=kube, store=store, cache=cache)

    def reconcile(self, body: Object) -> Object:
        """The pool's new status (camelCase, as stored)."""
        meta = body["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
        try:
            pool = GPUPool.model_validate(body)
        except ValidationError as err:
            # the placement stays as the last valid spec left it: members keep serving on it
            kept = dict(body.get("status") or {})
            problem = err.errors()[0]
            where = ".".join(str(p) for p in problem["loc"])
            return {**kept, "phase": "Degraded", "message": f"invalid spec: {where}: {problem['msg']}"}
        outcome = decide_pool(
            pool=pool,
            namespace=namespace,
            uid=uid,
            members=[
                self._member(m) for m in self.members(namespace) if pool_name(m.get("spec") or {}) == name
            ],
            claims=self._claims(namespace, name, uid),
            now=now(),
        )
        status = outcome.status
        for obj in outcome.apply:
            refusal = self.actor.apply(obj)
            if refusal is not None:
                status.phase = "Degraded"
                status.message = (
                    f"the API server refused the ResourceClaim {refusal.name} ({refusal.reason}): "
                    f"{refusal.message}; {status.message}"
                )
                break
        for ref in outcome.delete:
            self.actor.delete(ref)
        return status.to_k8s()

    def _member(self, body: Object) -> MemberSeen:
        name = body["metadata"]["name"]
        status = body.get("status") or {}
        raw = (status.get("pool") or {}).get("request")
        request = None
        if raw:
            try:
                request = PoolRequest.model_validate(raw)
            except ValidationError:
                request = None  # a mangled status is not trusted; the member's next pass rewrites it
        key = (status.get("profileRef") or {}).get("key")
        profile = self.cache.lookup(key).profile if key and request is not None else None
        # its phase and why, not its message: a profiling member's progress would rewrite the
        # pool's status (and queue every member) at each point it measures
        failing = next((c for c in status.get("conditions") or [] if c.get("status") == "False"), None)
        waiting = status.get("phase", "Pending") + (f" ({failing.get('reason')})" if failing else "")
        return MemberSeen(name=name, request=request, profile=profile, waiting=waiting)

    def _claims(self, namespace: str, name: str, uid: str) -> dict[str, int | None]:
        """The pool's ResourceClaims (live or being deleted): name -> the pool GPU they stand for."""
        claims = self.store.list("ResourceClaim", namespace, pool_labels(name))
        return {
            c["metadata"]["name"]: claim_gpu(c)
            for c in claims
            if any(ref.get("uid") == uid for ref in c["metadata"].get("ownerReferences") or [])
        }


__all__ = ["PoolReconciler"]
