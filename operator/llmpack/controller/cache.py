"""The profile cache: validated Profiles in labelled ConfigMaps of the operator's namespace.

A profile is expensive (a GPU for minutes), immutable once measured, and valid for every
LLMDeployment with the same key, in any namespace. Whatever is read back is validated again: a
ConfigMap is editable by anyone with access to the namespace, so a tampered or truncated one is
reported and treated as missing (profiled again), never trusted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import ValidationError

from llmpack.api.profile import Profile
from llmpack.controller.client import KubeClient
from llmpack.render.plan import LABEL_COMPONENT, LABEL_MANAGED_BY, LABEL_PROFILE_KEY, MANAGED_BY

logger = logging.getLogger(__name__)

DATA_KEY = "profile.json"


def cache_configmap_name(key: str) -> str:
    return f"llmpack-profile-{key[:40]}"


@dataclass
class CacheLookup:
    profile: Profile | None
    problem: str | None = None  # set when a cached entry existed but was unusable


class ProfileCache:
    def __init__(self, kube: KubeClient, namespace: str, memoize: bool = True):
        self.kube = kube
        self.namespace = namespace
        self.memoize = memoize  # only when the operator watches its own namespace (see forget)
        # Validated profiles by key. The operator watches these ConfigMaps: any change or deletion
        # forgets the entry (forget()), so the next read goes to the API server and is validated.
        self._validated: dict[str, Profile] = {}

    def forget(self, configmap_name: str) -> None:
        for key in [k for k in list(self._validated) if cache_configmap_name(k) == configmap_name]:
            self._validated.pop(key, None)  # a worker may have dropped it meanwhile

    def get(self, key: str) -> CacheLookup:
        if key in self._validated:
            return CacheLookup(self._validated[key])
        lookup = self._read(key)
        if lookup.profile is not None and self.memoize:
            self._validated[key] = lookup.profile
        return lookup

    def _read(self, key: str) -> CacheLookup:
        cm = self.kube.get("ConfigMap", self.namespace, cache_configmap_name(key))
        if cm is None:
            return CacheLookup(None)
        raw = (cm.get("data") or {}).get(DATA_KEY)
        if not raw:
            return CacheLookup(None, f"cached profile {cm['metadata']['name']} has no {DATA_KEY}")
        try:
            return CacheLookup(Profile.model_validate_json(raw))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            return CacheLookup(
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
