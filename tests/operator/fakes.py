"""Fake engines (real HTTP on 127.0.0.x, the control contract of SPEC.md section 1) and a fake KubeAPI."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKEN = "s3cret-token"
BASE_PATH = "/models/base"


def fake_digest(path: str) -> str:
    """The sha256 a fake engine reports for the checkpoint at `path`."""
    return hashlib.sha256(path.encode()).hexdigest()


@dataclass
class CallLog:
    """Every control call of every engine, in arrival order, and the concurrency seen."""

    calls: list[tuple[float, str, str, dict[str, Any]]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    def ops(self, op: str | None = None) -> list[tuple[str, str]]:
        return [(engine, o) for _, engine, o, _ in self.calls if op is None or o == op]


class FakeEngine:
    """One engine replica's control plane: running → rejecting → paused → running, weights, auth."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        log: CallLog,
        *,
        token: str = TOKEN,
        paused: bool = False,
        weights_version: str = "base",
        inflight: int = 2,
    ) -> None:
        self.name, self.host, self.port, self.log, self.token = name, host, port, log, token
        self.state = "paused" if paused else "running"
        self.weights_version = weights_version
        self.weights_path = BASE_PATH
        self.mode: str | None = "abort" if paused else None
        self.retracted = self.kept = 0
        self.inflight = inflight  # requests aborted by the next full pause
        self.fail: dict[str, int] = {}  # op → answer 500 this many more times
        self.delay: dict[str, float] = {}  # op → seconds before answering
        self.bad_paths: set[str] = set()  # update_weights from these → 400
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/pause", self._pause)
        app.router.add_post("/v1/resume", self._resume)
        app.router.add_get("/v1/is_paused", self._is_paused)
        app.router.add_post("/v1/update_weights", self._update_weights)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
            self._runner = None

    async def _enter(
        self, request: web.Request, op: str
    ) -> tuple[dict[str, Any], web.Response | None]:
        raw = await request.read()  # cached by aiohttp: handlers may read it again
        body: dict[str, Any] = json.loads(raw) if raw else {}
        self.log.calls.append((time.monotonic(), self.name, op, body))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return body, web.json_response({"detail": "unauthorized"}, status=401)
        self.log.in_flight += 1
        self.log.max_in_flight = max(self.log.max_in_flight, self.log.in_flight)
        try:
            if self.delay.get(op):
                await asyncio.sleep(self.delay[op])
        finally:
            self.log.in_flight -= 1
        if self.fail.get(op, 0) > 0:
            self.fail[op] -= 1
            return body, web.json_response(
                {"error": {"message": f"injected failure in {op}"}}, status=500
            )
        return body, None

    async def _pause(self, request: web.Request) -> web.Response:
        raw = await request.read()
        op = "reject" if raw and json.loads(raw).get("stage") == "reject" else "pause"
        body, err = await self._enter(request, op)
        if err:
            return err
        if op == "reject":
            if self.state == "running":
                self.state = "rejecting"
            return web.json_response({"paused": False, "state": self.state})
        if self.state == "paused":
            return web.json_response(
                {
                    "retracted": 0,
                    "kept": 0,
                    "paused": True,
                    "already_paused": True,
                    "aborted": 0,
                    "partial_tokens": 0,
                    "freed_blocks": 0,
                    "total_blocks": 64,
                    "duration_s": 0.0,
                    "forced": False,
                }
            )
        self.state = "paused"
        self.mode = str(body.get("mode") or "abort")
        settled, self.inflight = self.inflight, 0
        aborted = settled if self.mode == "abort" else 0
        self.retracted = settled if self.mode == "retract" else 0
        self.kept = settled if self.mode == "keep" else 0
        return web.json_response(
            {
                "mode": self.mode,
                "retracted": self.retracted,
                "kept": self.kept,
                "paused": True,
                "already_paused": False,
                "aborted": aborted,
                "partial_tokens": 10 * aborted,
                "freed_blocks": 3 * aborted,
                "total_blocks": 64,
                "duration_s": 0.01,
                "forced": False,
            }
        )

    async def _resume(self, request: web.Request) -> web.Response:
        _, err = await self._enter(request, "resume")
        if err:
            return err
        self.state = "running"
        self.mode, self.retracted, self.kept = None, 0, 0
        return web.json_response({"paused": False})

    async def _is_paused(self, request: web.Request) -> web.Response:
        _, err = await self._enter(request, "is_paused")
        if err:
            return err
        return web.json_response(
            {
                "is_paused": self.state == "paused",
                "state": self.state,
                "weights_version": self.weights_version,
                "weights_digest": fake_digest(self.weights_path),
                "weights_path": self.weights_path,
                "mode": self.mode if self.state != "running" else None,
                "retracted": self.retracted,
                "kept": self.kept,
            }
        )

    async def _update_weights(self, request: web.Request) -> web.Response:
        body, err = await self._enter(request, "update_weights")
        if err:
            return err
        if self.state != "paused":
            return web.json_response({"error": {"message": "not paused"}}, status=409)
        if body.get("path") in self.bad_paths:
            return web.json_response(
                {"error": {"message": "bad checkpoint: shape mismatch"}}, status=400
            )
        if body.get("digest") and body["digest"] != fake_digest(body["path"]):
            return web.json_response(
                {"error": {"message": "checkpoint rejected: digest mismatch"}}, status=400
            )
        self.weights_version, self.weights_path = body["version"], body["path"]
        self.retracted, self.kept = self.retracted + self.kept, 0
        return web.json_response(
            {
                "ok": True,
                "weights_version": self.weights_version,
                "weights_digest": fake_digest(self.weights_path),
            }
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fleet:
    """N fake engines on 127.0.0.2.. sharing one port (like pods sharing the pool's port)."""

    def __init__(self, n: int, **kwargs: Any) -> None:
        self.port = free_port()
        self.log = CallLog()
        self.engines = [
            FakeEngine(f"pool-{i}", f"127.0.0.{i + 2}", self.port, self.log, **kwargs)
            for i in range(n)
        ]

    async def __aenter__(self) -> Fleet:
        for e in self.engines:
            await e.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for e in self.engines:
            await e.stop()

    def replicas(self) -> list[Any]:
        from rlfleet_operator.replica import Replica

        return [Replica(e.name, e.url) for e in self.engines]

    def states(self) -> dict[str, str]:
        return {e.name: e.state for e in self.engines}


def pod(
    name: str,
    ip: str | None,
    *,
    ready: bool = True,
    phase: str = "Running",
    waiting: str | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if ip:
        status["podIP"] = ip
    if waiting:
        status["containerStatuses"] = [
            {"name": "engine", "state": {"waiting": {"reason": waiting, "message": "boom"}}}
        ]
    return {"metadata": {"name": name, "namespace": "ml"}, "status": status}


class FakeKube:
    """In-memory KubeAPI: one pool, its pods, ConfigMaps and Secrets; records every write."""

    def __init__(
        self, pool: dict[str, Any], pods: list[dict[str, Any]], token: str | None = TOKEN
    ) -> None:
        self.pool = pool
        self.pods = pods
        self.configmaps: dict[str, dict[str, str]] = {}
        self.secrets: dict[str, dict[str, str]] = {}
        self.applied: list[dict[str, Any]] = []
        self.status_writes: list[dict[str, Any]] = []
        self.configmap_writes: list[tuple[float, dict[str, str]]] = []
        self.pod_patches: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        if token is not None:
            self.secrets[f"{pool['metadata']['name']}-control-token"] = {"token": token}

    async def get_pool(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.pool)

    async def patch_pool_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        merged = _merge(self.pool.get("status") or {}, copy.deepcopy(dict(status)))
        self.pool["status"] = merged
        self.status_writes.append(copy.deepcopy(merged))

    async def apply(self, manifest: Mapping[str, Any]) -> None:
        self.applied.append(copy.deepcopy(dict(manifest)))

    async def create_if_absent(self, manifest: Mapping[str, Any]) -> bool:
        name = manifest["metadata"]["name"]
        table = self.configmaps if manifest["kind"] == "ConfigMap" else self.secrets
        if name in table:
            return False
        if manifest["kind"] == "Secret":
            import base64

            table[name] = {k: base64.b64decode(v).decode() for k, v in manifest["data"].items()}
        else:
            table[name] = dict(manifest["data"])
            self.configmap_writes.append((time.monotonic(), dict(manifest["data"])))
        return True

    async def get_configmap_data(self, namespace: str, name: str) -> dict[str, str] | None:
        data = self.configmaps.get(name)
        return dict(data) if data is not None else None

    async def patch_configmap_data(
        self, namespace: str, name: str, data: Mapping[str, str]
    ) -> None:
        self.configmaps[name] = {**self.configmaps.get(name, {}), **data}
        self.configmap_writes.append((time.monotonic(), dict(data)))

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str | None:
        return (self.secrets.get(name) or {}).get(key)

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self.pods)

    async def patch_pod_metadata(
        self,
        namespace: str,
        name: str,
        labels: Mapping[str, str | None],
        annotations: Mapping[str, str | None],
    ) -> None:
        pod = next(p for p in self.pods if p["metadata"]["name"] == name)
        meta = pod["metadata"]
        meta["labels"] = _merge(meta.get("labels") or {}, dict(labels))
        meta["annotations"] = _merge(meta.get("annotations") or {}, dict(annotations))
        self.pod_patches.append((name, dict(labels), dict(annotations)))

    def serving(self) -> dict[str, str | None]:
        """pod → its rlfleet.io/serving label."""
        return {
            p["metadata"]["name"]: (p["metadata"].get("labels") or {}).get("rlfleet.io/serving")
            for p in self.pods
        }


def _merge(old: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch."""
    out = dict(old)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def pool_body(
    name: str = "pool", *, replicas: int = 3, port: int = 8180, **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "rlfleet.io/v1alpha1",
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": "ml", "uid": "uid-123", "generation": 1},
        "spec": {"replicas": replicas, "image": "rlfleet/rlfleet:0.1.0", "port": port, **spec},
    }
