"""A small, explicit client for the few API calls the operator makes.

It rides on the official client's configuration, authentication and connection pool, and issues
plain REST calls: server-side apply needs `application/apply-patch+yaml`, status needs the
`/status` subresource, and every object is a dict, so typed models would only add conversions.
Knows the built-in kinds; a controller registers its own (register_kind).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlencode

import kubernetes
import urllib3

logger = logging.getLogger(__name__)

# Who the client is, to the API server: the field manager of its server-side applies and the
# component of its events. A controller sets its own (controller/client.py).
DEFAULTS = {"field_manager": "controller", "component": "controller"}

# kind -> (plural, namespaced): the built-in kinds a controller of this runtime reads or writes;
# register_kind adds a custom resource.
KINDS: dict[str, tuple[str, bool]] = {
    "ConfigMap": ("configmaps", True),
    "Secret": ("secrets", True),
    "ServiceAccount": ("serviceaccounts", True),
    "Service": ("services", True),
    "Pod": ("pods", True),
    "Event": ("events", True),
    "Namespace": ("namespaces", False),
    "Node": ("nodes", False),
    "Deployment": ("deployments", True),
    "Job": ("jobs", True),
    "Role": ("roles", True),
    "RoleBinding": ("rolebindings", True),
    "ResourceClaimTemplate": ("resourceclaimtemplates", True),
    "ResourceClaim": ("resourceclaims", True),
    "HorizontalPodAutoscaler": ("horizontalpodautoscalers", True),
    "NetworkPolicy": ("networkpolicies", True),
    "InferencePool": ("inferencepools", True),
    "PersistentVolumeClaim": ("persistentvolumeclaims", True),
    "DeviceClass": ("deviceclasses", False),
    "ResourceSlice": ("resourceslices", False),
}
API_VERSIONS: dict[str, str] = {
    "ConfigMap": "v1",
    "Secret": "v1",
    "ServiceAccount": "v1",
    "Service": "v1",
    "Pod": "v1",
    "Event": "v1",
    "Namespace": "v1",
    "Node": "v1",
    "Deployment": "apps/v1",
    "Job": "batch/v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
    "ResourceClaimTemplate": "resource.k8s.io/v1",
    "ResourceClaim": "resource.k8s.io/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "NetworkPolicy": "networking.k8s.io/v1",
    "InferencePool": "inference.networking.k8s.io/v1",
    "PersistentVolumeClaim": "v1",
    "DeviceClass": "resource.k8s.io/v1",
    "ResourceSlice": "resource.k8s.io/v1",
}


def register_kind(kind: str, api_version: str, plural: str, *, namespaced: bool) -> None:
    """Make a custom resource's kind known to path_for (and so to every KubeClient call)."""
    KINDS[kind] = (plural, namespaced)
    API_VERSIONS[kind] = api_version


_SURROGATE_PAIR = re.compile(r"\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})", re.IGNORECASE)


def yaml_safe_json(body: Any) -> str:
    """JSON text the API server's YAML decoder accepts (apply bodies are YAML). Plain json.dumps
    escapes a character beyond the Basic Multilingual Plane as a UTF-16 surrogate pair, which YAML
    refuses; YAML spells it \\UXXXXXXXX. Control characters stay escaped, as YAML requires."""

    def astral(match: re.Match[str]) -> str:
        high, low = int(match[1], 16), int(match[2], 16)
        return f"\\U{0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00):08X}"

    return _SURROGATE_PAIR.sub(astral, json.dumps(body))


class ErrorClass(StrEnum):
    """What an API error means for the operator; the value is the status condition's reason."""

    TRANSIENT = "Transient"  # retry with backoff: the server, the network or a race will resolve it
    NOT_FOUND = "NotFound"
    NAMESPACE_TERMINATING = "NamespaceTerminating"  # the namespace, and everything in it, is going
    # Refusals: retrying the same request cannot succeed until someone changes something (the spec,
    # a policy, a quota, the operator's grant); they belong in the LLMDeployment's status.
    ADMISSION_DENIED = "AdmissionDenied"  # a ValidatingAdmissionPolicy or an admission webhook
    QUOTA_EXCEEDED = "QuotaExceeded"  # a ResourceQuota of the namespace
    REJECTED = "ObjectRejected"  # the object is invalid for its API (422, 400, a schema mismatch)
    FORBIDDEN = "Forbidden"  # the authorizer (RBAC): the operator's ServiceAccount may not do it
    KIND_NOT_SERVED = "KindNotServed"  # no such resource path: a CRD not installed


REFUSALS = frozenset(
    {
        ErrorClass.ADMISSION_DENIED,
        ErrorClass.QUOTA_EXCEEDED,
        ErrorClass.REJECTED,
        ErrorClass.FORBIDDEN,
        ErrorClass.KIND_NOT_SERVED,
    }
)

# metav1.Status reasons of conditions that pass on their own (k8s.io/apimachinery StatusReason*).
_TRANSIENT_REASONS = frozenset(
    {
        "Conflict",
        "AlreadyExists",
        "TooManyRequests",
        "ServerTimeout",
        "Timeout",
        "ServiceUnavailable",
        "InternalError",
        "Expired",
        "Gone",
        "Unavailable",
    }
)
# The API server's own refusals of a request (apierrors.NewBadRequest, NewInvalid, NewForbidden...)
# always set one of these reasons; a webhook's Status passes through as the webhook wrote it.
_SERVER_REFUSAL_REASONS = frozenset({"BadRequest", "Invalid", "Forbidden", "RequestEntityTooLarge"})
# Text, as the last resort, where the API server gives no structure to go by:
# - the ResourceQuota admission plugin refuses with a plain admission.NewForbidden whose error text
#   is the only mark of a quota (k8s.io/apiserver plugin/resourcequota/controller.go: "exceeded
#   quota: <name>, requested: ..." and "failed quota: <name>: must specify ..."); a ReplicaSet's
#   ReplicaFailure condition carries that same text as its message;
# - server-side apply of a body that does not fit the type's schema (a string where a number
#   belongs, an unknown field, duplicate list keys) fails in structured-merge-diff with a plain
#   fmt error that the handler returns as a 500 with no reason (k8s.io/apimachinery
#   pkg/util/managedfields/internal/structuredmerge.go).
_QUOTA_TEXT = ("exceeded quota:", "failed quota:")
_SCHEMA_MISMATCH_TEXT = ("failed to create typed patch object", "failed to convert new object")


def quota_refusal(message: str) -> bool:
    """A ResourceQuota's refusal, told by its text (see _QUOTA_TEXT for why text)."""
    return any(text in message for text in _QUOTA_TEXT)


@dataclass
class KubeError(Exception):
    """An API error, with the structured parts of the metav1.Status the server answered."""

    status: int  # the HTTP code (the Status's code); 0 when the server could not be reached
    reason: str  # metav1.Status.reason: Forbidden, Invalid, Conflict, NotFound, TooManyRequests...
    message: str
    # Seconds the API server asked us to wait (Retry-After on a 429 or 503, or the Status's
    # details.retryAfterSeconds); the work queue never retries sooner.
    retry_after: float | None = None
    # metav1.Status.details.causes: [{"reason": "FieldValueInvalid", "message": ..., "field": ...}]
    causes: list[dict[str, str]] = field(default_factory=list)
    # The rest of details: the object the error is about ({"name", "group", "kind"}), if given.
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.message}"

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def error_class(self) -> ErrorClass:
        return classify(self)

    @property
    def retryable(self) -> bool:
        """Worth retrying with backoff: the same request can succeed later without anyone acting."""
        return self.error_class is ErrorClass.TRANSIENT

    @property
    def refusal(self) -> bool:
        """Refused for a reason someone must fix (spec, policy, quota, RBAC): status, not log."""
        return self.error_class in REFUSALS

    @property
    def namespace_terminating(self) -> bool:
        return self.error_class is ErrorClass.NAMESPACE_TERMINATING


def classify(err: KubeError) -> ErrorClass:
    """What an API error means, from its code, reason and details.causes (client-go's
    apierrors.IsX predicates look at the same fields); text only where the server gives no
    structure (_QUOTA_TEXT, _SCHEMA_MISMATCH_TEXT)."""
    code, reason, causes = err.status, err.reason, err.causes
    if code == 0:
        return ErrorClass.TRANSIENT  # never reached the server (connection refused, reset, timeout)
    if any(cause.get("reason") == "NamespaceTerminating" for cause in causes):
        return ErrorClass.NAMESPACE_TERMINATING  # the NamespaceLifecycle plugin's cause
    if code == 404 and reason != "NotFound" and "page not found" in err.message:
        # the server's plain 404 page, not a Status: it serves no such resource (a missing CRD)
        return ErrorClass.KIND_NOT_SERVED
    if code == 404 or reason == "NotFound":
        return ErrorClass.NOT_FOUND
    if code >= 500 and any(text in err.message for text in _SCHEMA_MISMATCH_TEXT):
        return ErrorClass.REJECTED
    if code in (409, 410, 429) or code >= 500 or reason in _TRANSIENT_REASONS:
        return ErrorClass.TRANSIENT
    # A ValidatingAdmissionPolicy's denial (any code: its `reason` picks it, Invalid by default)
    # carries one cause holding only its message; the server's own validation names the field and
    # the kind of fault (FieldValueInvalid...) in every cause.
    if causes and all(not cause.get("reason") and not cause.get("field") for cause in causes):
        return ErrorClass.ADMISSION_DENIED
    if code == 403 and quota_refusal(err.message):
        return ErrorClass.QUOTA_EXCEEDED
    if 400 <= code < 500 and (reason not in _SERVER_REFUSAL_REASONS or (code == 403 and not err.details)):
        # An admission webhook's own Status (webhook/errors.ToStatusErr keeps the webhook's code,
        # 400 if it gave none, and its reason, maybe none; controller-runtime's Denied() writes
        # 403 Forbidden with no details), where the server's own refusals name their resource.
        return ErrorClass.ADMISSION_DENIED
    if code == 403:
        return ErrorClass.FORBIDDEN  # the authorizer, or an admission plugin of the server itself
    if code in (400, 413, 422) or reason in ("BadRequest", "Invalid", "RequestEntityTooLarge"):
        return ErrorClass.REJECTED
    # 401 (credentials being rotated), 405, 406, 415...: not the user's to fix; retried and logged.
    return ErrorClass.TRANSIENT


def _retry_after_seconds(value: Any) -> float | None:
    """Retry-After in seconds (the API server sends whole seconds, never an HTTP date)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if 0 < seconds < 86400 else None


def path_for(kind: str, namespace: str | None = None, name: str | None = None, api_version: str = "") -> str:
    plural, namespaced = KINDS[kind]
    api_version = api_version or API_VERSIONS[kind]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    if namespaced and namespace:
        prefix += f"/namespaces/{namespace}"
    path = f"{prefix}/{plural}"
    return f"{path}/{name}" if name else path


class KubeClient:
    """Synchronous API calls; the operator runs them in worker threads."""

    def __init__(self, api_client: kubernetes.client.ApiClient, field_manager: str | None = None):
        self.api = api_client
        self.field_manager = field_manager or DEFAULTS["field_manager"]
        self.requests = 0  # counted for the scale benchmark (API requests per reconcile)

    @classmethod
    def from_config(cls, kubeconfig: str | None = None, context: str | None = None) -> KubeClient:
        configuration = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
        except (kubernetes.config.ConfigException, FileNotFoundError, TypeError):
            if kubeconfig:
                raise
            kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        configuration.connection_pool_maxsize = 32
        return cls(kubernetes.client.ApiClient(configuration))

    # -- raw ------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> Any:
        if query:
            path = f"{path}?{urlencode(query)}"
        headers = {"Accept": "application/json", "Content-Type": content_type}
        method, url, headers, _, _ = self.api.param_serialize(
            method, path, header_params=headers, auth_settings=["BearerToken"]
        )
        # The client serialises JSON bodies itself; other content types (apply-patch+yaml) go as
        # text, and JSON is valid YAML.
        payload = body if body is None or "json" in content_type else yaml_safe_json(body)
        self.requests += 1
        try:
            response = self.api.call_api(method, url, headers, payload, _request_timeout=timeout)
        except kubernetes.client.ApiException as err:
            raise self._error(err.status or 0, err.body or err.reason or "", err.headers) from err
        except (urllib3.exceptions.HTTPError, OSError) as err:
            # The API server is unreachable (restarting, network): a retryable condition, not a bug.
            raise KubeError(0, "Unavailable", f"API server unreachable: {type(err).__name__}") from err
        data = response.read()  # type: ignore[no-untyped-call]
        if not 200 <= response.status < 300:
            raise self._error(response.status, data, response.headers)
        return json.loads(data) if data else None

    @staticmethod
    def _error(status: int, data: bytes | str, headers: Any = None) -> KubeError:
        """The KubeError of a failed call, from the metav1.Status in its body (when it is one)."""
        retry_after = _retry_after_seconds((headers or {}).get("Retry-After"))
        try:
            parsed = json.loads(data)
        except (ValueError, TypeError):
            parsed = None
        if not isinstance(parsed, dict):
            text = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
            return KubeError(status, "", text[:500], retry_after)
        details = found if isinstance(found := parsed.get("details"), dict) else {}
        if retry_after is None:
            retry_after = _retry_after_seconds(details.get("retryAfterSeconds"))
        causes = [c for c in details.get("causes") or [] if isinstance(c, dict)]
        return KubeError(
            status,
            str(parsed.get("reason") or ""),
            str(parsed.get("message") or data),
            retry_after,
            causes=[{k: str(v) for k, v in c.items() if k in ("reason", "message", "field")} for c in causes],
            details={k: v for k, v in details.items() if k in ("name", "group", "kind", "uid")},
        )

    # -- objects --------------------------------------------------------------------------------

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.request("GET", path_for(kind, namespace, name))
            return found
        except KubeError as err:
            if err.not_found:
                return None
            raise

    def list(
        self,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        selectors = {"labelSelector": label_selector, "fieldSelector": field_selector}
        query = {k: v for k, v in selectors.items() if v} or None
        items: list[dict[str, Any]] = self.request("GET", path_for(kind, namespace), query=query).get(
            "items", []
        )
        return items

    def apply(self, obj: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        """Server-side apply with force: the controller owns the fields it renders, so hand edits
        of them are undone on the next reconcile (drift), while fields it does not render stay."""
        meta = obj["metadata"]
        query = {"fieldManager": self.field_manager, "force": "true"}
        if dry_run:
            query["dryRun"] = "All"
        path = path_for(obj["kind"], meta.get("namespace"), meta["name"], obj["apiVersion"])
        applied: dict[str, Any] = self.request(
            "PATCH", path, query=query, body=obj, content_type="application/apply-patch+yaml"
        )
        return applied

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        path = path_for(obj["kind"], meta.get("namespace"), api_version=obj["apiVersion"])
        created: dict[str, Any] = self.request("POST", path, body=obj)
        return created

    def delete(self, kind: str, namespace: str | None, name: str, *, propagation: str = "Background") -> bool:
        try:
            self.request("DELETE", path_for(kind, namespace, name), body={"propagationPolicy": propagation})
            return True
        except KubeError as err:
            if err.not_found:
                return False
            raise

    def patch_status(
        self, kind: str, namespace: str, name: str, status: dict[str, Any], resource_version: str | None
    ) -> dict[str, Any]:
        """Replace the status wholesale (merge patch of the `status` key), guarded by the
        resourceVersion we computed it from so a concurrent writer gets a 409, not a lost update."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        patched: dict[str, Any] = self.request(
            "PATCH",
            path_for(kind, namespace, name) + "/status",
            body=body,
            content_type="application/merge-patch+json",
        )
        return patched

    def merge_patch(
        self, kind: str, namespace: str | None, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        path = path_for(kind, namespace, name)
        patched: dict[str, Any] = self.request(
            "PATCH", path, body=patch, content_type="application/merge-patch+json"
        )
        return patched

    def event(
        self,
        involved: dict[str, Any],
        *,
        reason: str,
        message: str,
        type_: str = "Normal",
        component: str | None = None,
    ) -> None:
        """Post a core/v1 Event on an object. Events are best effort: a failure is logged only."""
        meta = involved["metadata"]
        component = component or DEFAULTS["component"]
        now = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.create(event)
        except KubeError as err:
            logger.warning(
                "could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], err
            )
