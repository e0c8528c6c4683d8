"""The Kubernetes calls the reconciler makes, as async methods over the (sync) kubernetes client.

Objects come back as plain dicts in API shape (camelCase), the same shape the
manifests in `resources.py` are written in. The reconciler depends only on the
`KubeAPI` protocol, so tests can hand it a fake.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping
from typing import Any, Protocol

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from . import names

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"


class KubeAPI(Protocol):
    async def get_pool(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def patch_pool_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None: ...
    async def apply(self, manifest: Mapping[str, Any]) -> None: ...
    async def create_if_absent(self, manifest: Mapping[str, Any]) -> bool: ...
    async def get_configmap_data(self, namespace: str, name: str) -> dict[str, str] | None: ...
    async def patch_configmap_data(
        self, namespace: str, name: str, data: Mapping[str, str]
    ) -> None: ...
    async def read_secret_key(self, namespace: str, name: str, key: str) -> str | None: ...
    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]: ...
    async def patch_pod_metadata(
        self,
        namespace: str,
        name: str,
        labels: Mapping[str, str | None],
        annotations: Mapping[str, str | None],
    ) -> None: ...


def load_config() -> client.ApiClient:
    """In-cluster config when running in a pod, else KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def _raw(response: Any) -> dict[str, Any]:
    return json.loads(response.data)


class Kube:
    """KubeAPI over the kubernetes client; every call runs in a worker thread."""

    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.api_client = api_client or load_config()
        self.core = client.CoreV1Api(self.api_client)
        self.apps = client.AppsV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)

    async def get_pool(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            resp = await asyncio.to_thread(
                self.custom.get_namespaced_custom_object,
                names.GROUP,
                names.VERSION,
                namespace,
                names.PLURAL,
                name,
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return _raw(resp)

    async def patch_pool_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        await asyncio.to_thread(
            self.custom.patch_namespaced_custom_object_status,
            names.GROUP,
            names.VERSION,
            namespace,
            names.PLURAL,
            name,
            {"status": dict(status)},
            _content_type=MERGE,
            _preload_content=False,
        )

    async def apply(self, manifest: Mapping[str, Any]) -> None:
        """Server-side apply (idempotent create-or-patch, the operator owns the fields it sets)."""
        kind = manifest["kind"]
        meta = manifest["metadata"]
        patch = {
            "StatefulSet": self.apps.patch_namespaced_stateful_set,
            "Service": self.core.patch_namespaced_service,
            "ConfigMap": self.core.patch_namespaced_config_map,
        }[kind]
        for attempt in (1, 2):
            try:
                await asyncio.to_thread(
                    patch,
                    meta["name"],
                    meta["namespace"],
                    dict(manifest),
                    field_manager=names.FIELD_MANAGER,
                    force=True,
                    _content_type=APPLY,
                    _preload_content=False,  # the answer is not needed: skip deserialisation
                )
                return
            except ApiException as exc:
                # An apply that creates races any other creator of the object (409
                # AlreadyExists); applied again it is an update.
                if exc.status != 409 or attempt == 2:
                    raise

    async def create_if_absent(self, manifest: Mapping[str, Any]) -> bool:
        """Create unless it exists (never overwrites); True if created."""
        kind = manifest["kind"]
        meta = manifest["metadata"]
        create = {
            "ConfigMap": self.core.create_namespaced_config_map,
            "Secret": self.core.create_namespaced_secret,
        }[kind]
        try:
            await asyncio.to_thread(
                create,
                meta["namespace"],
                dict(manifest),
                field_manager=names.FIELD_MANAGER,
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def get_configmap_data(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            resp = await asyncio.to_thread(
                self.core.read_namespaced_config_map, name, namespace, _preload_content=False
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(_raw(resp).get("data") or {})

    async def patch_configmap_data(
        self, namespace: str, name: str, data: Mapping[str, str]
    ) -> None:
        await asyncio.to_thread(
            self.core.patch_namespaced_config_map,
            name,
            namespace,
            {"data": dict(data)},
            _content_type=MERGE,
            _preload_content=False,
        )

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str | None:
        try:
            resp = await asyncio.to_thread(
                self.core.read_namespaced_secret, name, namespace, _preload_content=False
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        value = (_raw(resp).get("data") or {}).get(key)
        return base64.b64decode(value).decode() if value else None

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        resp = await asyncio.to_thread(
            self.core.list_namespaced_pod,
            namespace,
            label_selector=selector,
            _preload_content=False,
        )
        return list(_raw(resp).get("items") or [])

    async def patch_pod_metadata(
        self,
        namespace: str,
        name: str,
        labels: Mapping[str, str | None],
        annotations: Mapping[str, str | None],
    ) -> None:
        """Merge-patch a pod's labels and annotations (None removes a key)."""
        await asyncio.to_thread(
            self.core.patch_namespaced_pod,
            name,
            namespace,
            {"metadata": {"labels": dict(labels), "annotations": dict(annotations)}},
            _content_type=MERGE,
            _preload_content=False,
        )
