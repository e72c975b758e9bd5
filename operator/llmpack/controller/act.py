"""Act: carry out one Outcome (planner/outcome.py) against the API server. Decides nothing.

Order: the cache write, the applies in order, then the deletes. An apply the API server refuses
for a reason someone must fix (runtime/kube.py classify: an admission policy, a quota, an invalid
object, a missing grant) stops the acting and comes back as an ApplyRefusal, which the
reconciler hands to the decision as an observation; any other API error is raised, for the work
queue to retry with backoff.

An object already as desired is not applied again: the client remembers, per object, a hash of
what it last applied and the version the API server answered (the generation where the kind has
one, else the resourceVersion), and skips the apply while the watch cache shows that same
version. A change by anyone else (a `kubectl scale`, a hand edit of the spec) moves the version,
so the next pass applies again and undoes it; after a restart every object is applied once.

An object whose name another LLMDeployment's objects already hold (two LLMDeployment names can
render one object name, e.g. `a.b` and `a-b-<hash>`, see render/plan.py kube_name) is never
applied over: that would hand the other's Deployment or Service to this one. It comes back as an
ApplyRefusal (NameConflict) naming the owner. Limit: the check reads the watch cache, so two such
LLMDeployments created within one watch delay may both apply once; the owner reference of the
later apply stays, and the earlier one is refused from its next pass on.
"""

from __future__ import annotations

import logging
from typing import Any

from llmpack.controller.cache import ProfileCache
from llmpack.planner.outcome import ObjectRef, Outcome
from llmpack.planner.snapshot import ApplyRefusal
from llmpack.render.plan import stable_hash
from llmpack.runtime.client import Client
from llmpack.runtime.kube import ErrorClass, KubeError
from llmpack.runtime.store import Store

logger = logging.getLogger(__name__)

ObjectKey = tuple[str, str, str]  # (kind, namespace, name)


class Actor:
    def __init__(self, *, kube: Client, store: Store, cache: ProfileCache):
        self.kube = kube
        self.store = store
        self.cache = cache
        self.applied: dict[ObjectKey, tuple[str, str | None]] = {}  # -> (hash applied, version answered)

    def act(self, outcome: Outcome) -> ApplyRefusal | None:
        if outcome.cache_evict is not None:
            self.cache.evict(outcome.cache_evict)
        if outcome.cache_put is not None:
            self.cache.put(*outcome.cache_put)
        for obj in outcome.apply:
            refusal = self.apply(obj)
            if refusal is not None:
                return refusal
        for ref in outcome.delete:
            self.delete(ref)
        return None

    def apply(self, obj: dict[str, Any]) -> ApplyRefusal | None:
        meta = obj["metadata"]
        key = (obj["kind"], meta.get("namespace") or "", meta["name"])
        digest = stable_hash(obj)
        observed = self.store.get(key[0], key[1], key[2])
        if observed is not None and self.applied.get(key) == (digest, _version(observed)):
            return None  # as desired, and nobody changed it since
        other = _other_owner(observed, obj)
        if other is not None:
            return ApplyRefusal(
                kind=obj["kind"],
                name=meta["name"],
                reason="NameConflict",
                message=f"it already belongs to {other['kind']} {other['name']} (uid {other['uid']})",
                retry=True,
            )
        try:
            answered = self.kube.apply(obj)
        except KubeError as err:
            self.applied.pop(key, None)
            if not err.refusal:
                raise
            message = err.message
            if err.error_class is ErrorClass.KIND_NOT_SERVED:
                message = f"no {obj['apiVersion']} {obj['kind']} is served ({message.strip()})"
            return ApplyRefusal(
                kind=obj["kind"],
                name=meta["name"],
                reason=err.error_class.value,
                message=message,
                retry=err.error_class is not ErrorClass.REJECTED,
            )
        self.applied[key] = (digest, _version(answered))
        return None

    def delete(self, ref: ObjectRef) -> None:
        self.applied.pop((ref.kind, ref.namespace, ref.name), None)
        try:
            self.kube.delete(ref.kind, ref.namespace, ref.name)
        except KubeError as err:
            if not err.refusal:
                raise
            logger.warning("could not delete %s %s/%s: %s", ref.kind, ref.namespace, ref.name, err)


def _other_owner(observed: dict[str, Any] | None, desired: dict[str, Any]) -> dict[str, Any] | None:
    """The controlling owner reference of `observed` when it is not the one `desired` names."""
    if observed is None:
        return None
    mine = {ref.get("uid") for ref in desired["metadata"].get("ownerReferences") or []}
    theirs: list[dict[str, Any]] = [
        ref for ref in observed["metadata"].get("ownerReferences") or [] if ref.get("uid")
    ]
    if not mine or not theirs or any(ref["uid"] in mine for ref in theirs):
        return None
    return theirs[0]


def _version(obj: dict[str, Any]) -> str | None:
    meta = obj.get("metadata") or {}
    generation = meta.get("generation")
    return f"g{generation}" if generation is not None else meta.get("resourceVersion")
