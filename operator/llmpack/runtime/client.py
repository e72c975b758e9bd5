"""The API client as a controller uses it: the Protocol that the real client (kube.py KubeClient)
and its in-memory double (fake.py FakeClient) both satisfy, so that a controller is written and
type-checked against one interface (controller-runtime's client.Client and client/fake)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Client(Protocol):
    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or None where it does not exist."""
        ...

    def list(
        self,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        """Objects matching both selectors (`k=v,k2=v2`: equality only)."""
        ...

    def apply(self, obj: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        """Server-side apply; returns the object as stored."""
        ...

    def create(self, obj: dict[str, Any]) -> dict[str, Any]: ...

    def delete(self, kind: str, namespace: str | None, name: str, *, propagation: str = "Background") -> bool:
        """True if it existed."""
        ...

    def patch_status(
        self, kind: str, namespace: str, name: str, status: dict[str, Any], resource_version: str | None
    ) -> dict[str, Any]: ...

    def event(
        self,
        involved: dict[str, Any],
        *,
        reason: str,
        message: str,
        type_: str = "Normal",
        component: str | None = None,
    ) -> None: ...
