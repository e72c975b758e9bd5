"""The profile cache: validated Profiles in labelled ConfigMaps of the operator's namespace.

A profile is expensive (a GPU for minutes), immutable once measured, and valid for every
LLMDeployment with the same key, in any namespace. Whatever is read back is validated again: a
ConfigMap is editable by anyone with access to the namespace, so a tampered or truncated one is
reported and treated as missing (profiled again), never trusted.

Reads: the validated profiles kept in memory; else, where the operator watches its own namespace,
the watch cache; else (or on a miss there: the watch may not have delivered the entry yet, and a
miss would start a profiling Job) one GET.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from llmpack.api.profile import Profile
from llmpack.planner.snapshot import CachedProfile
from llmpack.render.plan import (
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_PROFILE_KEY,
    MANAGED_BY,
    PROFILE_DATA_KEY,
    profile_cache_name,
)
from llmpack.runtime.client import Client
from llmpack.runtime.store import Store

logger = logging.getLogger(__name__)

DATA_KEY = PROFILE_DATA_KEY
cache_configmap_name = profile_cache_name


class ProfileCache:
    def __init__(self, kube: Client, namespace: str, memoize: bool = True, store: Store | None = None):
        self.kube = kube
        self.namespace = namespace
        self.memoize = memoize  # only when the operator watches its own namespace (see forget)
        self.store = store  # the watch cache, where it holds the operator's namespace
        # Validated profiles by key. The operator watches these ConfigMaps: any change or deletion
        # forgets the entry (forget()), so the next read goes to the API server and is validated.
        self._validated: dict[str, Profile] = {}

    def forget(self, configmap_name: str) -> None:
        for key in [k for k in list(self._validated) if cache_configmap_name(k) == configmap_name]:
            self._validated.pop(key, None)  # a worker may have dropped it meanwhile

    def lookup(self, key: str) -> CachedProfile:
        if key in self._validated:
            return CachedProfile(self._validated[key])
        lookup = self._read(key)
        if lookup.profile is not None and self.memoize:
            self._validated[key] = lookup.profile
        return lookup

    def _read(self, key: str) -> CachedProfile:
        name = cache_configmap_name(key)
        cm = self.store.get("ConfigMap", self.namespace, name) if self.store is not None else None
        if cm is None:
            cm = self.kube.get("ConfigMap", self.namespace, name)
        if cm is None:
            return CachedProfile(None)
        raw = (cm.get("data") or {}).get(DATA_KEY)
        if not raw:
            return CachedProfile(None, f"cached profile {cm['metadata']['name']} has no {DATA_KEY}")
        try:
            return CachedProfile(Profile.model_validate_json(raw))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            return CachedProfile(
                None, f"cached profile {cm['metadata']['name']} is invalid ({where}: {first.get('msg')})"
            )

    def put(self, key: str, profile: Profile) -> None:
        self.kube.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": cache_configmap_name(key),
                    "namespace": self.namespace,
                    "labels": {
                        LABEL_MANAGED_BY: MANAGED_BY,
                        LABEL_COMPONENT: "profile-cache",
                        LABEL_PROFILE_KEY: key[:63],
                    },
                },
                "data": {DATA_KEY: profile.model_dump_json()},
            }
        )
        if self.memoize:
            self._validated[key] = profile

    def evict(self, key: str) -> None:
        self._validated.pop(key, None)
        self.kube.delete("ConfigMap", self.namespace, cache_configmap_name(key))
