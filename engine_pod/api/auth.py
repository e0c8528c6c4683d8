"""Bearer-token check for the control endpoints."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request


def make_control_auth(token: str | None):
    """A FastAPI dependency: 401 unless `Authorization: Bearer <token>` matches (no-op without a token)."""

    async def check(request: Request) -> None:
        if not token:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            raise HTTPException(
                status_code=401,
                detail="control endpoints need 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check
