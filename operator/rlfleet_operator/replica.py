"""Async HTTP client of one engine's control endpoints (SPEC.md section 1).

The bearer token travels only in the Authorization header; it is never part of
a message, a repr or a log line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

DEFAULT_CALL_TIMEOUT_S = 5.0
# The engine bounds the drain itself (timeout_s); the HTTP call gets this much on top.
PAUSE_SLACK_S = 15.0


@dataclass(frozen=True)
class Replica:
    """One engine replica: its pod name and the base URL of its pod IP."""

    pod: str
    url: str


class ControlError(Exception):
    """A control call failed. `retryable` is False for answers that a retry cannot change (4xx)."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


def _error_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, Mapping):
        err = body.get("error") or body.get("detail") or body
        if isinstance(err, Mapping):
            err = err.get("message") or err
        return str(err)[:200]
    return str(body)[:200]


class ReplicaClient:
    """Control calls with per-call timeouts; one pooled httpx client shared by all replicas."""

    def __init__(
        self,
        token: str | None,
        *,
        timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout_s = timeout_s
        self._http = httpx.AsyncClient(
            transport=transport,
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            trust_env=False,
        )

    def __repr__(self) -> str:
        return f"ReplicaClient(token={'set' if self._headers else 'none'}, timeout_s={self._timeout_s})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> ReplicaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _call(
        self,
        method: str,
        replica: Replica,
        path: str,
        body: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        url = replica.url.rstrip("/") + path
        try:
            response = await self._http.request(
                method,
                url,
                json=dict(body) if body is not None else None,
                headers=self._headers,
                timeout=timeout_s or self._timeout_s,
            )
        except httpx.TimeoutException as exc:
            raise ControlError(
                f"{method} {path}: timed out after {timeout_s or self._timeout_s:g}s"
            ) from exc
        except httpx.HTTPError as exc:
            raise ControlError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            status = response.status_code
            retryable = status >= 500 or status == 429
            raise ControlError(
                f"{method} {path}: HTTP {status}: {_error_detail(response)}",
                status=status,
                retryable=retryable,
            )
        try:
            data = response.json()
        except ValueError:
            data = {}
        return data if isinstance(data, dict) else {"result": data}

    async def is_paused(
        self, replica: Replica, *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """`{"is_paused", "state", "weights_version"}`."""
        return await self._call("GET", replica, "/v1/is_paused", timeout_s=timeout_s)

    async def reject(
        self,
        replica: Replica,
        *,
        timeout_s: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Close admission only (pause stage one); nothing is aborted.

        `extra` (mode, admission) goes along so `admission: queue` holds arrivals from stage one."""
        body = {**(extra or {}), "stage": "reject"}
        return await self._call("POST", replica, "/v1/pause", body, timeout_s=timeout_s)

    async def pause(
        self, replica: Replica, *, drain_timeout_s: float, extra: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The full pause; the engine force-frees past `drain_timeout_s` and says so."""
        body = {**(extra or {}), "timeout_s": drain_timeout_s}
        return await self._call(
            "POST", replica, "/v1/pause", body, timeout_s=drain_timeout_s + PAUSE_SLACK_S
        )

    async def resume(self, replica: Replica, *, timeout_s: float | None = None) -> dict[str, Any]:
        return await self._call("POST", replica, "/v1/resume", {}, timeout_s=timeout_s)

    async def update_weights(
        self,
        replica: Replica,
        *,
        version: str,
        path: str,
        timeout_s: float,
        digest: str | None = None,
    ) -> dict[str, Any]:
        """Load a checkpoint (409 unless paused; 400 for a bad checkpoint or a digest mismatch)."""
        body = {"path": path, "version": version}
        if digest:
            body["digest"] = digest
        return await self._call("POST", replica, "/v1/update_weights", body, timeout_s=timeout_s)
