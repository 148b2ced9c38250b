"""The FastAPI application."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from temporalio.service import RPCError

from api.routes import deployments, projects
from moorage import __version__
from moorage.service import MoorageError

MAX_BODY_BYTES = 1024 * 1024
"""Largest request body the API reads."""


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
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
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
        return JSONResponse(status_code=exc.status_code, content=body)

    @app.exception_handler(RPCError)
    async def _temporal_error(request: Request, exc: RPCError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": f"Temporal error: {exc.message}"})

    return app


app = create_app()
