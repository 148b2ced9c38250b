"""Settings, read from ``MOORAGE_*`` environment variables."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from moorage.models import NAME_RE


@dataclass(frozen=True)
class ApiKey:
    """Who a bearer key speaks for."""

    tenant_id: str
    user_id: str
    role: str = "deployer"
    """``deployer`` (read and change) or ``viewer`` (read only)."""


ROLES = ("viewer", "deployer")


class Settings(BaseSettings):
    """Moorage settings. Every field is ``MOORAGE_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="MOORAGE_", extra="ignore")

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_tls: bool = False
    """Connect to Temporal over TLS (a Temporal cluster; the dev server speaks plain gRPC)."""
    temporal_tls_cert: Path | None = None
    """Client certificate for mTLS to Temporal."""
    temporal_tls_key: Path | None = None
    temporal_tls_ca: Path | None = None
    task_queue: str = "moorage"
    api_keys: str = ""
    """``key=tenant/user`` pairs, comma-separated."""
    data_dir: Path = Path(".moorage")
    """Where ``moorage dev`` keeps the Temporal SQLite file and the dev API key."""
    tenant: str = "default"
    """The tenant the CLI acts for (the CLI talks to Temporal directly)."""
    user: str = "cli"
    """The user the CLI records on deployments."""
    retained_revisions: int = Field(default=10, ge=1, le=1000)
    """Revisions a project keeps for rollback."""
    router: Literal["haproxy", "nginx"] = "haproxy"
    """The traffic router backend the worker drives."""
    router_dir: Path | None = None
    """Router state, proxy config and sockets (default: ``<data_dir>/router-<router>``)."""
    router_bind: str = "127.0.0.1"
    """Address the routes listen on."""
    route_ports: str = "21000-21999"
    """Listen ports handed to routes whose Compose port publishes none."""
    reconcile_every: float = Field(default=600, ge=0)
    """Seconds between two scheduled orphan reconciliations (the worker creates the schedule;
    0: no schedule)."""
    drain_timeout: float = Field(default=10.0, ge=0, le=3600)
    """Seconds a server taken out of a route may finish its in-flight requests."""

    def resolved_router_dir(self) -> Path:
        """Where the router keeps its files."""
        return (self.router_dir or self.data_dir / f"router-{self.router}").resolve()

    def port_range(self) -> tuple[int, int]:
        """``route_ports`` as (first, last).

        Raises:
            ValueError: not ``first-last``.
        """
        first, _, last = self.route_ports.partition("-")
        if not first.isdigit() or not last.isdigit() or int(first) > int(last):
            raise ValueError("MOORAGE_ROUTE_PORTS must look like 21000-21999")
        return int(first), int(last)

    def parsed_api_keys(self) -> dict[str, ApiKey]:
        """``MOORAGE_API_KEYS`` as key → (tenant, user, role).

        An entry is ``key=tenant/user`` (role ``deployer``) or ``key=tenant/user:role`` with role
        ``viewer`` or ``deployer``.

        Raises:
            ValueError: an entry is not of that form, names an invalid tenant or an unknown role.
        """
        keys: dict[str, ApiKey] = {}
        for entry in self.api_keys.split(","):
            entry = entry.strip()
            if not entry:
                continue
            key, sep, who = entry.partition("=")
            tenant, slash, user = who.partition("/")
            if not sep or not slash or not key or not user or not NAME_RE.match(tenant):
                raise ValueError(
                    "MOORAGE_API_KEYS entries must look like key=tenant/user "
                    "(tenant: lowercase letters, digits, dashes)"
                )
            role = "deployer"
            name, colon, maybe_role = user.rpartition(":")
            if colon:
                if maybe_role not in ROLES or not name:
                    raise ValueError(
                        f"MOORAGE_API_KEYS: role {maybe_role!r} is not one of {', '.join(ROLES)}"
                    )
                user, role = name, maybe_role
            keys[key] = ApiKey(tenant_id=tenant, user_id=user, role=role)
        return keys


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
