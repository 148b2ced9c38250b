"""The FastAPI application."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from temporalio.service import RPCError

from api.routes import deployments, projects
from moorage import __version__
from moorage.service import MoorageError

MAX_BODY_BYTES = 1024 * 1024
"""Largest request body the API reads."""


def _json_safe(value: Any) -> Any:
    r"""``value`` with every string encodable as UTF-8 (a lone surrogate written ``\ud800``).

    A JSON body may escape a lone surrogate; pydantic refuses it, and FastAPI's 422 quotes the
    input, which the response then failed to encode: a 500 instead of the 422.
    """
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_json_safe(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def create_app() -> FastAPI:
    """The Moorage API."""
    app = FastAPI(
        title="Moorage",
        version=__version__,
        description="Deployments of Compose projects on Docker, as durable Temporal workflows.",
    )
    app.include_router(projects.router)
    app.include_router(deployments.router)

    @app.middleware("http")
    async def _limit_body(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # Refuse oversized bodies before reading them (the Compose field has its own, lower cap).
        length = request.headers.get("content-length")
        # isdigit() alone takes '²' and 5,000 digits, which int() refuses (a 500).
        if length is not None and (
            not (length.isascii() and length.isdigit())
            or len(length.lstrip("0")) > len(str(MAX_BODY_BYTES))
            or int(length) > MAX_BODY_BYTES
        ):
            return JSONResponse(
                status_code=413,
                content={"detail": f"request body larger than {MAX_BODY_BYTES} bytes"},
            )
        return await call_next(request)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness: answers without a key."""
        return {"status": "ok"}

    @app.exception_handler(MoorageError)
    async def _moorage_error(request: Request, exc: MoorageError) -> JSONResponse:
        body: dict[str, object]
        if exc.field is not None:
            body = {"detail": [{"loc": exc.field, "msg": exc.message, "type": "invalid"}]}
        else:
            body = {"detail": exc.message}
        return JSONResponse(status_code=exc.status_code, content=_json_safe(body))

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler, with the input it quotes made encodable.
        detail = _json_safe(jsonable_encoder(exc.errors()))
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(RPCError)
    async def _temporal_error(request: Request, exc: RPCError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": f"Temporal error: {exc.message}"})

    return app


app = create_app()
