"""OpenAI-shaped error responses."""

from __future__ import annotations

from fastapi.responses import JSONResponse


def error_response(
    status: int, type_: str, message: str, retry_after: int | None = None
) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse(
        status_code=status,
        content={"error": {"type": type_, "message": message, "code": status}},
        headers=headers,
    )


def paused_response(state: str) -> JSONResponse:
    """What a generation request gets while the engine is not admitting."""
    return error_response(
        503,
        "engine_paused",
        f"engine is {state}: not admitting requests; retry after resume",
        retry_after=1,
    )
