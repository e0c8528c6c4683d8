"""The FastAPI app of an engine pod, wired to its engine process."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError

from engine_pod import __version__
from engine_pod.api.control import build_control_router
from engine_pod.api.engine_client import EngineClient
from engine_pod.api.errors import error_response
from engine_pod.api.metrics import ApiMetrics
from engine_pod.api.openai import build_openai_router
from engine_pod.config import EngineConfig


def create_app(config: EngineConfig) -> FastAPI:
    client = EngineClient(config)
    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await client.start()
        try:
            yield
        finally:
            await client.close()

    app = FastAPI(title="rlfleet engine pod", version=__version__, lifespan=lifespan)
    app.state.client = client
    app.state.metrics = metrics

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        details = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}"
            for e in exc.errors()
        )
        return error_response(400, "invalid_request_error", f"bad body: {details}")

    app.include_router(build_openai_router(client, metrics))
    app.include_router(
        build_control_router(client, metrics, config.control_token, config.pause_timeout_s)
    )
    return app
