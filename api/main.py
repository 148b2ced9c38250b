"""The FastAPI application."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.service import RPCError

from api.routes import deployments, projects
from moorage import __version__
from moorage.service import MoorageError
from moorage.settings import get_settings, settings_error

MAX_BODY_BYTES = 1024 * 1024
"""Largest request body the API reads."""


def _json_safe(value: Any) -> Any:
    r"""``value`` with every string encodable as UTF-8 (a lone surrogate written ``\ud800``).

    A JSON body may escape a lone surrogate; pydantic refuses it, and FastAPI's 422 quotes the
    input, which the response then failed to encode: a 500 instead of the 422. The same for a
    number JSON has not (Python's parser takes ``NaN``, ``Infinity`` and ``1e400``) and for bytes
    that are not UTF-8.
    """
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, bytes):  # a body sent without a JSON content type, quoted as it came
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # NaN, Infinity, 1e400: JSON has no such number
    if isinstance(value, dict):
        return {_json_safe(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


TOO_LARGE = f"request body larger than {MAX_BODY_BYTES} bytes"


def _length_over_cap(length: str) -> bool:
    """Whether a ``Content-Length`` value is over the cap, or no number at all."""
    # isdigit() alone takes '²' and 5,000 digits, which int() refuses (a 500).
    return (
        not (length.isascii() and length.isdigit())
        or len(length.lstrip("0")) > len(str(MAX_BODY_BYTES))
        or int(length) > MAX_BODY_BYTES
    )


class _BodyLimit:
    """Refuses a request body over ``MAX_BODY_BYTES`` with 413, before it is read whole.

    A stated ``Content-Length`` over the cap is refused before any of the body is read; a body
    sent without one (chunked) is counted as it arrives, and the read that passes the cap fails
    with the 413 (FastAPI passes an ``HTTPException`` raised while it reads a body through).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and _length_over_cap(length.decode("latin-1")):
            await JSONResponse(status_code=413, content={"detail": TOO_LARGE})(scope, receive, send)
            return
        read = 0

        async def counted() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > MAX_BODY_BYTES:
                    raise HTTPException(status_code=413, detail=TOO_LARGE)
            return message

        await self.app(scope, counted, send)


class _SettingsCheck:
    """Refuses to start with invalid ``MOORAGE_*`` settings, naming each variable at fault.

    ``moorage api`` checks them before it starts uvicorn; this covers ``uvicorn api.main:app``
    run directly, which would otherwise serve and fail every request that reads them (a 500).
    The refusal is the lifespan's ``startup.failed`` message: one line, no traceback.
    """

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            settings = self.fastapi_app.dependency_overrides.get(get_settings, get_settings)
            try:
                settings()
            except ValidationError as exc:
                await receive()  # lifespan.startup
                message = f"invalid settings: {settings_error(exc)}"
                await send({"type": "lifespan.startup.failed", "message": message})
                return
        await self.app(scope, receive, send)


def create_app() -> FastAPI:
    """The Moorage API."""
    app = FastAPI(
        title="Moorage",
        version=__version__,
        description="Deployments of Compose projects on Docker, as durable Temporal workflows.",
    )
    app.include_router(projects.router)
    app.include_router(deployments.router)

    app.add_middleware(_BodyLimit)
    app.add_middleware(_SettingsCheck, fastapi_app=app)

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
        detail = _json_safe(jsonable_encoder(_json_safe(exc.errors())))
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(RPCError)
    async def _temporal_error(request: Request, exc: RPCError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": f"Temporal error: {exc.message}"})

    return app


app = create_app()
