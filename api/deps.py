"""Dependencies: settings, the caller's identity (bearer key), the DeploymentService."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from moorage.service import DeploymentService
from moorage.settings import Settings, get_settings
from moorage.temporal import connect

_bearer = HTTPBearer(auto_error=False)


@dataclass(frozen=True)
class Caller:
    """Who is calling: the tenant and user a bearer key maps to."""

    tenant_id: str
    user_id: str
    role: str = "deployer"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """Bearer keys, held only as SHA-256 digests and compared in constant time."""

    def __init__(self, settings: Settings):
        self._keys = [(_digest(k), v) for k, v in settings.parsed_api_keys().items()]

    def lookup(self, key: str) -> Caller | None:
        """The caller a key belongs to, or None."""
        digest = _digest(key)
        found: Caller | None = None
        for known, who in self._keys:
            # Compare against every key, so timing says nothing about which one matched.
            if hmac.compare_digest(known, digest):
                found = Caller(tenant_id=who.tenant_id, user_id=who.user_id, role=who.role)
        return found


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_keyring(request: Request, settings: SettingsDep) -> KeyRing:
    """The key ring, built once per app."""
    ring: KeyRing | None = getattr(request.app.state, "keyring", None)
    if ring is None:
        ring = request.app.state.keyring = KeyRing(settings)
    return ring


def get_caller(
    ring: Annotated[KeyRing, Depends(get_keyring)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller, from ``Authorization: Bearer <key>``.

    Raises:
        HTTPException: 401 when the header is missing or the key is unknown.
    """
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer key: send Authorization: Bearer <key>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    caller = ring.lookup(credentials.credentials)
    if caller is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "unknown API key", headers={"WWW-Authenticate": "Bearer"}
        )
    return caller


_connect_lock = asyncio.Lock()


async def get_service(request: Request, settings: SettingsDep) -> DeploymentService:
    """The DeploymentService, connected to Temporal on first use.

    Raises:
        HTTPException: 503 when Temporal does not answer.
    """
    svc: DeploymentService | None = getattr(request.app.state, "service", None)
    if svc is not None:
        return svc
    async with _connect_lock:
        svc = getattr(request.app.state, "service", None)
        if svc is None:
            try:
                client = await connect(settings)
            except RuntimeError as exc:
                raise HTTPException(
                    status.HTTP_503_SERVICE_UNAVAILABLE,
                    f"Temporal does not answer at {settings.temporal_address}: {exc}",
                ) from exc
            svc = request.app.state.service = DeploymentService(client, settings)
    return svc


def get_deployer(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
    """The caller, who must hold the ``deployer`` role to change anything.

    Raises:
        HTTPException: 403 for a ``viewer`` key.
    """
    if caller.role != "deployer":
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"role {caller.role!r} may only read; this needs 'deployer'"
        )
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]
DeployerDep = Annotated[Caller, Depends(get_deployer)]
ServiceDep = Annotated[DeploymentService, Depends(get_service)]
