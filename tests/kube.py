"""Helpers for tests that talk to the testbed's API server (see tests/conftest.py for fixtures).

Every client here is an explicit `kubernetes.client.ApiClient` built from a kubeconfig; nothing
relies on the kubernetes package's global default configuration.
"""

from __future__ import annotations

import time
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import kubernetes
from kubernetes.client.rest import ApiException

if TYPE_CHECKING:
    from testbed import Testbed

T = TypeVar("T")


def api_client(kubeconfig: str | Path) -> kubernetes.client.ApiClient:
    """A client acting as whoever `kubeconfig` names (its current context)."""
    return kubernetes.config.new_client_from_config(config_file=str(kubeconfig))


def wait_for(
    probe: Callable[[], T], timeout: float = 30, interval: float = 0.2, what: str | None = None
) -> T:
    """Call `probe` until it returns something truthy and return that; fail after `timeout` s.

    An ApiException, or a connection refused by a server not yet listening, counts as "not yet"
    (the last one is shown on timeout).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = probe()
            if last:
                return last
        except ApiException as e:
            last = f"ApiException {e.status}: {e.reason}"
        except (urllib.error.URLError, ConnectionError) as e:  # a server that is not listening yet
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what or probe}; last value: {last!r}"
            )
        time.sleep(interval)


def create_namespace(api: kubernetes.client.ApiClient, name: str, timeout: float = 30) -> str:
    """Create a namespace and wait until its `default` ServiceAccount exists (pods need it)."""
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name, "labels": {"llmpack.io/test": "true"}}})
    wait_for(
        lambda: core.read_namespaced_service_account("default", name),
        timeout=timeout,
        what=f"ServiceAccount {name}/default",
    )
    return name


def delete_namespace(api: kubernetes.client.ApiClient, name: str) -> None:
    """Start deleting a namespace (does not wait: the namespace controller finishes it)."""
    try:
        kubernetes.client.CoreV1Api(api).delete_namespace(name)
    except ApiException as e:
        if e.status != 404:
            raise


def service_account_token(
    api: kubernetes.client.ApiClient,
    namespace: str,
    name: str,
    expiration_seconds: int = 3600,
    audiences: list[str] | None = None,
) -> str:
    """A bound token for ServiceAccount `namespace/name` (TokenRequest API, like `kubectl create token`)."""
    spec: dict = {"expirationSeconds": expiration_seconds}
    if audiences:
        spec["audiences"] = audiences
    resp = kubernetes.client.CoreV1Api(api).create_namespaced_service_account_token(
        name, namespace, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
    )
    return resp.status.token


def service_account_kubeconfig(
    testbed: Testbed, api: kubernetes.client.ApiClient, namespace: str, name: str, path: str | Path
) -> Path:
    """Write a kubeconfig at `path` that acts as ServiceAccount `namespace/name`; returns `path`.

    Usable by kubectl (`testbed.kubectl(..., kubeconfig=path)`), helm, or kopf via KUBECONFIG.
    """
    import testbed as tb

    token = service_account_token(api, namespace, name)
    user = f"system:serviceaccount:{namespace}:{name}"
    return tb.write_kubeconfig(Path(path), tb.kubeconfig(testbed.server, testbed.ca_file, user, token=token))


def service_account_client(
    testbed: Testbed, api: kubernetes.client.ApiClient, namespace: str, name: str
) -> kubernetes.client.ApiClient:
    """A client acting as ServiceAccount `namespace/name` (its own token, nothing else)."""
    import testbed as tb

    token = service_account_token(api, namespace, name)
    user = f"system:serviceaccount:{namespace}:{name}"
    return kubernetes.config.new_client_from_config_dict(
        tb.kubeconfig(testbed.server, testbed.ca_file, user, token=token)
    )


def custom(api: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    """CustomObjectsApi: plain dicts for any group, e.g. resource.k8s.io/v1 or llmpack.io."""
    return kubernetes.client.CustomObjectsApi(api)


def pods(api: kubernetes.client.ApiClient, namespace: str, selector: str | None = None) -> list:
    return kubernetes.client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items


def condition(obj, type_: str) -> str | None:
    """The status ("True"/"False"/"Unknown") of condition `type_` on a typed object or dict, or None."""
    status = obj.get("status", {}) if isinstance(obj, dict) else obj.status
    conds = (status.get("conditions") if isinstance(status, dict) else status.conditions) or []
    for c in conds:
        ctype, cstatus = (c["type"], c["status"]) if isinstance(c, dict) else (c.type, c.status)
        if ctype == type_:
            return cstatus
    return None
