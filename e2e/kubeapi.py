"""A minimal Kubernetes REST client (httpx) for the node agent and the tests.

Only what a local kubelet stand-in needs: get/list/watch, create, strategic
merge patch (incl. subresources), delete. Token auth, TLS against the
apiserver's CA (or unverified when no CA is given).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

SMP = "application/strategic-merge-patch+json"


class ApiError(Exception):
    """A non-2xx answer from the apiserver."""

    def __init__(self, status: int, body: str, what: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {body[:300]}")
        self.status = status


class KubeApi:
    """Token-authenticated access to one apiserver."""

    def __init__(self, server: str, token: str, ca_file: str | None = None) -> None:
        self.server = server.rstrip("/")
        self._client = httpx.Client(
            base_url=self.server,
            headers={"Authorization": f"Bearer {token}"},
            verify=ssl.create_default_context(cafile=ca_file) if ca_file else False,
            timeout=httpx.Timeout(30.0, connect=5.0),
        )

    @classmethod
    def from_kubeconfig(cls, path: str | Path) -> KubeApi:
        """Build from a token kubeconfig as written by LocalCluster."""
        cfg = yaml.safe_load(Path(path).read_text())
        ctx_name = cfg["current-context"]
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
        return cls(cluster["server"], user["token"], cluster.get("certificate-authority"))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> KubeApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, what: str = "", **kw: Any) -> dict:
        resp = self._client.request(method, path, **kw)
        if resp.status_code >= 300:
            raise ApiError(resp.status_code, resp.text, what or f"{method} {path}")
        return resp.json() if resp.content else {}

    def get(self, path: str, **params: Any) -> dict:
        return self.request("GET", path, params=params or None)

    def create(self, path: str, body: dict) -> dict:
        return self.request("POST", path, json=body)

    def patch(self, path: str, body: dict) -> dict:
        """Strategic merge patch (conditions merge by type)."""
        return self.request("PATCH", path, content=json.dumps(body), headers={"Content-Type": SMP})

    def delete(self, path: str, body: dict | None = None) -> dict:
        return self.request("DELETE", path, json=body)

    def watch(self, path: str, resource_version: str, **params: Any) -> Iterator[dict]:
        """Yield watch events ({type, object}) until the server ends the stream."""
        params = {"watch": "1", "resourceVersion": resource_version, **params}
        timeout = httpx.Timeout(30.0, connect=5.0, read=None)
        with self._client.stream("GET", path, params=params, timeout=timeout) as resp:
            if resp.status_code >= 300:
                resp.read()
                raise ApiError(resp.status_code, resp.text, f"watch {path}")
            for line in resp.iter_lines():
                if line:
                    yield json.loads(line)
