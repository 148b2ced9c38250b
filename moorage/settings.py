"""Settings, read from ``MOORAGE_*`` environment variables."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from moorage.models import NAME_RE


@dataclass(frozen=True)
class ApiKey:
    """Who a bearer key speaks for."""

    tenant_id: str
    user_id: str


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

    def parsed_api_keys(self) -> dict[str, ApiKey]:
        """``MOORAGE_API_KEYS`` as key → (tenant, user).

        Raises:
            ValueError: an entry is not ``key=tenant/user`` or names an invalid tenant.
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
            keys[key] = ApiKey(tenant_id=tenant, user_id=user)
        return keys


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
