"""The operator's only door to the Kubernetes API.

Everything else receives plain dicts from here, or a :class:`ClusterApi`
Protocol, so the reconciler is tested with a counting in-memory fake and the
real thing is tested against a real API server.

Writes use server-side apply with our field manager (``edgefill-operator``)
and ``force=true``: the operator is the one authority over the fields it
renders, so a conflicting hand edit of those fields is taken back (drift
repair), while fields it never renders (other controllers', users' extra
labels) stay untouched. The kubernetes client's generic request path is used
rather than its per-kind methods, because apply is one code path for every
kind we render.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import quote

from kubernetes import client, config

from edgefill_operator import names

Obj = dict[str, Any]

_PLURALS = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "ServiceAccount": "serviceaccounts",
    "Secret": "secrets",
    "Pod": "pods",
    "StatefulSet": "statefulsets",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "NetworkPolicy": "networkpolicies",
    "EdgeSite": names.EDGESITES,
    "ContentSet": names.CONTENTSETS,
}

REQUEST_TIMEOUT_SECONDS = 30.0


class KubeError(Exception):
    """An API call failed; ``status`` is the HTTP status and ``reason`` the API's reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class ClusterApi(Protocol):
    """What the reconciler needs from the cluster."""

    def apply(self, manifest: Mapping[str, Any]) -> Obj: ...

    def create(self, manifest: Mapping[str, Any]) -> bool: ...

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None: ...

    def list(
        self, api_version: str, kind: str, namespace: str | None, selector: str | None = None
    ) -> list[Obj]: ...

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None: ...


def collection_path(api_version: str, kind: str, namespace: str | None) -> str:
    plural = _PLURALS[kind]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespace is None:
        return f"{base}/{plural}"
    return f"{base}/namespaces/{quote(namespace, safe='')}/{plural}"


def object_path(api_version: str, kind: str, namespace: str, name: str) -> str:
    return f"{collection_path(api_version, kind, namespace)}/{quote(name, safe='')}"


class Kube:
    """:class:`ClusterApi` over the kubernetes client's configured connection."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._client = api_client

    @classmethod
    def from_environment(cls) -> Kube:
        """In-cluster config inside a pod, else the kubeconfig (KUBECONFIG) like kubectl."""
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        return cls(client.ApiClient())

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> Obj | None:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        m, url, hdrs, payload, post = self._client.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        resp = self._client.call_api(
            m, url, hdrs, payload, post, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
        resp.read()  # type: ignore[no-untyped-call]
        data: dict[str, Any] = json.loads(resp.data) if resp.data else {}
        if resp.status == 404 and method == "GET":
            return None
        if not 200 <= resp.status < 300:
            raise KubeError(resp.status, data.get("reason", ""), data.get("message", ""))
        result: Obj = data
        return result

    def apply(self, manifest: Mapping[str, Any]) -> Obj:
        meta = manifest["metadata"]
        path = object_path(
            manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"]
        )
        out = self._request(
            "PATCH",
            path,
            query=[("fieldManager", names.FIELD_MANAGER), ("force", "true")],
            body=dict(manifest),
            content_type="application/apply-patch+yaml",
        )
        assert out is not None  # PATCH never maps to None
        return out

    def create(self, manifest: Mapping[str, Any]) -> bool:
        """Create the object unless it exists; True when this call created it.

        For objects that must never be overwritten once made (a generated
        secret): no read is needed, so no permission to read them either.
        """
        meta = manifest["metadata"]
        path = collection_path(manifest["apiVersion"], manifest["kind"], meta["namespace"])
        try:
            self._request(
                "POST",
                path,
                query=[("fieldManager", names.FIELD_MANAGER)],
                body=dict(manifest),
                content_type="application/json",
            )
        except KubeError as exc:
            if exc.status == 409 and exc.reason == "AlreadyExists":
                return False
            raise
        return True

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        return self._request("GET", object_path(api_version, kind, namespace, name))

    def list(
        self, api_version: str, kind: str, namespace: str | None, selector: str | None = None
    ) -> list[Obj]:
        query = [("labelSelector", selector)] if selector else []
        out = self._request("GET", collection_path(api_version, kind, namespace), query=query)
        items: list[Obj] = (out or {}).get("items", [])
        return items

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        """Merge-patch the status subresource (lists such as conditions are replaced whole)."""
        path = object_path(api_version, kind, namespace, name) + "/status"
        try:
            self._request(
                "PATCH",
                path,
                body={"status": dict(status)},
                content_type="application/merge-patch+json",
            )
        except KubeError as exc:
            if exc.status != 404:  # the object went away meanwhile: nothing to report on
                raise
