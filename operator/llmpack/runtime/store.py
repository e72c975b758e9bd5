"""A watch cache: the newest copy of every object the watches delivered, read by reconciles instead
of the API server (controller-runtime's cache-backed client reads).

Objects are kept by kind, namespace and name, and indexed by the value of one label (`index_label`,
e.g. the owner's name) so that a reconcile finds its objects without scanning a namespace.

Limits, as with any informer cache: what it holds may lag the API server by a watch event (a
reconcile may miss an object it created a moment ago, and applying it again must be harmless),
and it holds only the kinds and label selectors the watches cover: a miss is not proof of absence
unless the caller knows a watch covers the object. Writers are the watch handlers (one event loop);
readers are reconciles in worker threads; a lock keeps each read consistent. Readers get the
stored dicts themselves and must not change them.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from typing import Any

Object = dict[str, Any]


class Store:
    def __init__(self, index_label: str | None = None):
        self.index_label = index_label
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str], dict[str, Object]] = {}  # (kind, namespace) -> name -> obj
        self._index: dict[tuple[str, str, str], set[str]] = {}  # (kind, namespace, label value) -> names

    def put(self, kind: str, obj: Mapping[str, Any]) -> None:
        """Keep a copy of `obj` (a watch event's ADDED or MODIFIED body)."""
        stored = copy.deepcopy(dict(obj))
        meta = stored.get("metadata") or {}
        namespace, name = meta.get("namespace") or "", meta["name"]
        with self._lock:
            self._unindex(kind, namespace, name)
            self._objects.setdefault((kind, namespace), {})[name] = stored
            value = (meta.get("labels") or {}).get(self.index_label or "")
            if value is not None:
                self._index.setdefault((kind, namespace, value), set()).add(name)

    def remove(self, kind: str, namespace: str | None, name: str) -> None:
        """Forget an object (a watch event's DELETED)."""
        with self._lock:
            self._unindex(kind, namespace or "", name)
            self._objects.get((kind, namespace or ""), {}).pop(name, None)

    def _unindex(self, kind: str, namespace: str, name: str) -> None:
        old = self._objects.get((kind, namespace), {}).get(name)
        if old is None:
            return
        value = ((old.get("metadata") or {}).get("labels") or {}).get(self.index_label or "")
        if value is not None:
            self._index.get((kind, namespace, value), set()).discard(name)

    def get(self, kind: str, namespace: str | None, name: str) -> Object | None:
        with self._lock:
            return self._objects.get((kind, namespace or ""), {}).get(name)

    def list(self, kind: str, namespace: str | None, labels: Mapping[str, str] | None = None) -> list[Object]:
        """Objects of `kind` in `namespace` whose labels include `labels` (equality selector)."""
        wanted = dict(labels or {})
        with self._lock:
            in_namespace = self._objects.get((kind, namespace or ""), {})
            if self.index_label is not None and self.index_label in wanted:
                names = self._index.get((kind, namespace or "", wanted[self.index_label]), set())
                candidates = [in_namespace[n] for n in names if n in in_namespace]
            else:
                candidates = list(in_namespace.values())
        return [
            obj
            for obj in candidates
            if wanted.items() <= ((obj.get("metadata") or {}).get("labels") or {}).items()
        ]
