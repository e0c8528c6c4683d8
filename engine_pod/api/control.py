"""Control routes: pause, resume, is_paused, abort_requests, update_weights, health, ready, metrics."""

from __future__ import annotations

import json
import logging

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from engine_pod.api.auth import make_control_auth
from engine_pod.api.engine_client import EngineClient, EngineUnavailable
from engine_pod.api.errors import error_response
from engine_pod.api.metrics import ApiMetrics
from engine_pod.api.protocol import AbortRequest, PauseRequest, UpdateWeightsRequest

log = logging.getLogger("rlfleet.api")


async def _parse(request: Request, model: type[BaseModel]) -> BaseModel | Response:
    """Parse an optional JSON body; a clear 400 on malformed JSON or bad fields."""
    raw = await request.body()
    try:
        data = json.loads(raw) if raw.strip() else {}
        if not isinstance(data, dict):
            raise ValueError("body must be a JSON object")
        return model.model_validate(data)
    except (ValueError, ValidationError) as e:
        return error_response(400, "invalid_request_error", f"bad body: {e}")


async def _call(
    client: EngineClient, cmd: str, args: dict | None = None, timeout: float = 60.0
) -> Response | dict:
    try:
        reply = await client.call(cmd, args, timeout=timeout)
    except EngineUnavailable as e:
        return error_response(503, "engine_unavailable", str(e), retry_after=1)
    if reply["status"] != 200:
        return error_response(reply["status"], "control_error", reply.get("error", "failed"))
    return reply["result"]


def build_control_router(
    client: EngineClient, metrics: ApiMetrics, token: str | None, pause_timeout_s: float
) -> APIRouter:
    router = APIRouter()
    auth = [Depends(make_control_auth(token))]

    @router.post("/v1/pause", dependencies=auth)
    async def pause(request: Request) -> Response:
        body = await _parse(request, PauseRequest)
        if isinstance(body, Response):
            return body
        if client.state == "running":
            client.state = "rejecting"  # close admission here at once; the engine confirms
        client.admission = body.admission  # likewise: queue arrivals from now on
        timeout = body.timeout_s if body.timeout_s is not None else pause_timeout_s
        result = await _call(
            client, "pause", body.model_dump(exclude_none=True), timeout=timeout + 30
        )
        if isinstance(result, Response):
            return result
        if result.get("paused") and not result.get("already_paused"):
            metrics.pause_duration.observe(result["duration_s"])
        return JSONResponse(result)

    @router.post("/v1/resume", dependencies=auth)
    async def resume() -> Response:
        result = await _call(client, "resume")
        return result if isinstance(result, Response) else JSONResponse(result)

    @router.get("/v1/is_paused", dependencies=auth)
    async def is_paused() -> Response:
        if not client.alive or not client.ready.is_set():  # no state before the engine is up
            return error_response(
                503, "engine_unavailable", client.fatal or "engine is starting", retry_after=1
            )
        return JSONResponse(
            {
                "is_paused": client.state == "paused",
                "state": client.state,
                "weights_version": client.weights_version,
                "weights_digest": client.weights_digest,
                "weights_path": client.weights_path,
                "mode": client.pause_mode,
                "admission": client.admission,
                "retracted": client.retracted,
                "kept": client.kept,
                "loading_weights": client.loading,
            }
        )

    @router.post("/v1/abort_requests", dependencies=auth)
    async def abort_requests(request: Request) -> Response:
        body = await _parse(request, AbortRequest)
        if isinstance(body, Response):
            return body
        if body.abort_all:
            result = await _call(client, "abort_all")
        else:
            ids = [i for i in body.request_ids if i]
            if len(ids) != len(body.request_ids):
                log.warning(
                    "abort_requests: skipped %d entries without a request id",
                    len(body.request_ids) - len(ids),
                )
            result = await _call(client, "abort", {"ids": ids})
        return result if isinstance(result, Response) else JSONResponse(result)

    @router.post("/v1/update_weights", dependencies=auth)
    async def update_weights(request: Request) -> Response:
        body = await _parse(request, UpdateWeightsRequest)
        if isinstance(body, Response):
            return body
        args = body.model_dump(exclude_none=True)
        result = await _call(client, "update_weights", args, timeout=1800)
        metrics.weight_updates.labels("ok" if not isinstance(result, Response) else "refused").inc()
        return result if isinstance(result, Response) else JSONResponse(result)

    @router.get("/v1/stats", dependencies=auth)
    async def stats() -> Response:
        result = await _call(client, "stats", timeout=10)
        return result if isinstance(result, Response) else JSONResponse(result)

    @router.get("/health")
    async def health() -> Response:
        if not client.alive:
            return error_response(
                503, "engine_unavailable", client.fatal or "engine process not running"
            )
        return JSONResponse({"status": "ok", "state": client.state})

    @router.get("/ready")
    async def ready() -> Response:
        if not client.alive or not client.ready.is_set():
            return error_response(503, "engine_unavailable", client.fatal or "engine is starting")
        if client.loading:
            return error_response(503, "loading_weights", "engine is loading weights")
        return JSONResponse(
            {"ready": True, "state": client.state, "weights_version": client.weights_version}
        )

    @router.get("/metrics")
    async def prometheus() -> Response:
        stats = None
        if client.alive and client.ready.is_set():
            try:
                reply = await client.call("stats", timeout=5)
                stats = reply.get("result")
            except EngineUnavailable:
                stats = None
        return Response(
            metrics.render(stats), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    return router
