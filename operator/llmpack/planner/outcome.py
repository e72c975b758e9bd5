"""What one pass decided for one LLMDeployment: the one value the controller acts on.

Made in one place (planner/reconcile.py `decide`). The controller acts in this order: the cache
write (a measurement is never lost to a crash after it), the applies in order (a claim template
before the pods that use it), then the deletes (a profiling Job last, so that a later pass finds
and finishes an interrupted cleanup), then events and the status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from llmpack.api.profile import Profile

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class ObjectRef:
    kind: str
    namespace: str
    name: str


@dataclass(frozen=True)
class Outcome:
    """`status`: the whole status to write (the API server's JSON); `requeue_after`: seconds until
    the next pass where no event will say (None: wait for events)."""

    status: dict[str, Any]
    apply: tuple[dict[str, Any], ...] = ()
    delete: tuple[ObjectRef, ...] = ()
    cache_put: tuple[str, Profile] | None = None
    cache_evict: str | None = None
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None
