"""An in-memory API server for tests of a controller (controller-runtime's client/fake): objects in
a dict, every call recorded, and a watch cache (`store`) that sees the same objects, as the watches
of a synced controller would.

Limits: no admission, no defaulting, no validation, no resourceVersion conflicts, no garbage
collection; an apply replaces the stored object but keeps its status and data (what a status
writer or a Job's pod put there). Tests that need the API server's own behaviour run against the
real one (tests/integration, tests/e2e).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llmpack.runtime.store import Store

Key = tuple[str, str | None, str]  # (kind, namespace, name)


@dataclass
class FakeClient:
    objects: dict[Key, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str, str | None, str | None]] = field(default_factory=list)
    applied: list[dict[str, Any]] = field(default_factory=list)  # every object as applied, in order
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def store(self) -> FakeStore:
        """The watch cache's view of the same objects (reads are not recorded as calls)."""
        return FakeStore(self)

    def put(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self.objects[(obj["kind"], meta.get("namespace"), meta["name"])] = copy.deepcopy(obj)

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", kind, namespace, name))
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def list(
        self,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        self.calls.append(("list", kind, namespace, label_selector))
        wanted = dict(part.split("=", 1) for part in (label_selector or "").split(",") if part)
        fields = dict(part.split("=", 1) for part in (field_selector or "").split(",") if part)
        return [
            copy.deepcopy(obj)
            for obj in _matching(self.objects, kind, namespace, wanted)
            if all(str(_field(obj, path)) == value for path, value in fields.items())
        ]

    def apply(self, obj: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        meta = obj["metadata"]
        self.calls.append(("apply", obj["kind"], meta.get("namespace"), meta["name"]))
        self.applied.append(copy.deepcopy(obj))
        stored = copy.deepcopy(obj)
        before = self.objects.get((obj["kind"], meta.get("namespace"), meta["name"]))
        if before is not None:
            stored["status"] = before.get("status", {})
            if "data" in before and "data" not in stored:
                stored["data"] = before["data"]
        if not dry_run:
            self.put(stored)
        return copy.deepcopy(stored)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.apply(obj)

    def delete(self, kind: str, namespace: str | None, name: str, *, propagation: str = "Background") -> bool:
        self.calls.append(("delete", kind, namespace, name))
        return self.objects.pop((kind, namespace, name), None) is not None

    def patch_status(
        self, kind: str, namespace: str, name: str, status: dict[str, Any], resource_version: str | None
    ) -> dict[str, Any]:
        self.calls.append(("patch_status", kind, namespace, name))
        stored = self.objects.setdefault(
            (kind, namespace, name), {"kind": kind, "metadata": {"name": name, "namespace": namespace}}
        )
        stored["status"] = copy.deepcopy(status)
        return copy.deepcopy(stored)

    def event(
        self,
        involved: dict[str, Any],
        *,
        reason: str,
        message: str,
        type_: str = "Normal",
        component: str | None = None,
    ) -> None:
        self.events.append({"involved": involved["metadata"]["name"], "reason": reason, "type": type_})


@dataclass
class FakeStore(Store):
    """The store of a FakeClient: reads its objects as they are now."""

    client: FakeClient

    def __post_init__(self) -> None:
        super().__init__()

    def put(self, kind: str, obj: Mapping[str, Any]) -> None:
        self.client.put({**obj, "kind": kind})

    def remove(self, kind: str, namespace: str | None, name: str) -> None:
        self.client.objects.pop((kind, namespace, name), None)

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.client.objects.get((kind, namespace, name))

    def list(
        self, kind: str, namespace: str | None, labels: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        return _matching(self.client.objects, kind, namespace, dict(labels or {}))


def _matching(
    objects: dict[Key, dict[str, Any]], kind: str, namespace: str | None, wanted: dict[str, str]
) -> list[dict[str, Any]]:
    return [
        obj
        for (k, ns, _), obj in list(objects.items())
        if k == kind
        and (namespace is None or ns == namespace)
        and wanted.items() <= (obj["metadata"].get("labels") or {}).items()
    ]


def _field(obj: dict[str, Any], path: str) -> Any:
    """The value at a field selector's dotted path (`involvedObject.uid`), or None."""
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node
