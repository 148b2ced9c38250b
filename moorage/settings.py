"""Settings, read from ``MOORAGE_*`` environment variables."""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from moorage.compose import MAX_CPUS, MAX_PIDS, ComposePolicy, parse_memory
from moorage.models import NAME_RE


@dataclass(frozen=True)
class ApiKey:
    """Who a bearer key speaks for."""

    tenant_id: str
    user_id: str
    role: str = "deployer"
    """``deployer`` (read and change) or ``viewer`` (read only)."""


ROLES = ("viewer", "deployer")
MAX_RECONCILE_EVERY_S = 365 * 86_400.0
"""Longest interval between two scheduled reconciliations (a year)."""


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
    router_managed: bool = True
    """The worker starts the proxy when it finds it down, and ``moorage dev`` stops it. False: the
    proxy runs outside Moorage (a container, see the README; HAProxy only): the worker writes its
    config, drives it through its sockets, and waits for it to come back when it is down."""
    router_bind: str = "127.0.0.1"
    """Address the routes listen on."""
    route_ports: str = "21000-21999"
    """Listen ports handed to routes whose Compose port publishes none."""
    replica_ports: str = "17000-19999"
    """Loopback host ports for replicas of services with a Compose ``restart:`` policy (others get
    the engine's ephemeral ports); below the kernel's ephemeral range."""
    instance: str = "default"
    """Which Moorage installation this is, where several (each with its own Temporal) share one
    Docker engine: the worker labels every container it makes with it (``moorage.instance``),
    ReconcileAll removes only its own instance's, and a start never adopts a container of another
    (containers made before the label count as ``default``). Lowercase letters, digits, ``_.-``."""
    reconcile_every: float = Field(default=600, ge=0, le=MAX_RECONCILE_EVERY_S, allow_inf_nan=False)
    """Seconds between two scheduled orphan reconciliations (the worker creates the schedule;
    0: no schedule; at most a year)."""
    drain_timeout: float = Field(default=10.0, ge=0, le=3600, allow_inf_nan=False)
    """Seconds a server taken out of a route may finish its in-flight requests."""
    tenant_policies: str = ""
    """What each tenant may use beyond the safe default, as JSON: ``{"tenant": {"privileged":
    true, "cap_add": ["NET_ADMIN"], "bind_paths": ["/srv/data"], "devices": ["/dev/fuse"]}}``
    (see :class:`moorage.compose.ComposePolicy`); a tenant not named gets the default policy."""
    default_memory: str = "512m"
    """Memory limit of a container whose service sets none (Docker units: ``512m``, ``1g``)."""
    default_cpus: float = Field(default=1.0, ge=0.01, le=MAX_CPUS, allow_inf_nan=False)
    """CPU limit of a container whose service sets none (as ``cpus``: 0.01 to 1024)."""
    default_pids: int = Field(default=512, ge=1, le=MAX_PIDS)
    """Process limit of a container whose service sets none (as ``pids_limit``)."""
    max_active_deployments: int = Field(default=10, ge=1)
    """Deployments a tenant may have running at once."""

    @field_validator("instance")
    @classmethod
    def _check_instance(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,62}", value):
            raise ValueError(
                f"MOORAGE_INSTANCE {value!r}: 1-63 lowercase letters, digits and _.- "
                "(starting with a letter or digit)"
            )
        return value

    @field_validator("router_bind")
    @classmethod
    def _check_router_bind(cls, value: str) -> str:
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError(
                f"MOORAGE_ROUTER_BIND {value!r}: an IPv4 address of the worker's host, where "
                "routes listen (127.0.0.1, or 0.0.0.0 for every address)"
            ) from None
        return value

    @field_validator("default_memory")
    @classmethod
    def _check_default_memory(cls, value: str) -> str:
        parse_memory(value, service=None, key="default_memory")
        return value

    @model_validator(mode="after")
    def _check_policies(self) -> Settings:
        # A bad value stops the process at start, not every request or step that reads it.
        self.tenant_policy_map()
        self.parsed_api_keys()
        self.port_range()
        # Only its form: the worker refuses to start when it overlaps MOORAGE_ROUTE_PORTS.
        _port_range(self.replica_ports, "MOORAGE_REPLICA_PORTS", "17000-19999")
        if not self.router_managed and self.router != "haproxy":
            raise ValueError(
                "MOORAGE_ROUTER_MANAGED=false is supported with MOORAGE_ROUTER=haproxy only"
            )
        self._check_temporal()
        return self

    def _check_temporal(self) -> None:
        """Refuse a bad Temporal address or TLS file at start.

        They failed at the first connection: a traceback (the CLI, the worker), or a 500 for
        every request (the API).
        """
        if not re.fullmatch(r"\S+:(\d{1,5})", self.temporal_address) or not (
            0 < int(self.temporal_address.rsplit(":", 1)[1]) < 65536
        ):
            raise ValueError(
                f"MOORAGE_TEMPORAL_ADDRESS {self.temporal_address!r}: host:port, e.g. "
                "127.0.0.1:7233"
            )
        files = {
            "MOORAGE_TEMPORAL_TLS_CERT": self.temporal_tls_cert,
            "MOORAGE_TEMPORAL_TLS_KEY": self.temporal_tls_key,
            "MOORAGE_TEMPORAL_TLS_CA": self.temporal_tls_ca,
        }
        given = [name for name, path in files.items() if path is not None]
        if given and not self.temporal_tls:
            raise ValueError(f"{given[0]} is set but MOORAGE_TEMPORAL_TLS is not true")
        if (self.temporal_tls_cert is None) != (self.temporal_tls_key is None):
            raise ValueError(
                "MOORAGE_TEMPORAL_TLS_CERT and MOORAGE_TEMPORAL_TLS_KEY go together (mTLS)"
            )
        for name, path in files.items():
            if path is None:
                continue
            try:
                path.read_bytes()
            except OSError as exc:
                raise ValueError(f"{name} {str(path)!r}: {exc.strerror or exc}") from None

    def default_memory_bytes(self) -> int:
        """``default_memory`` in bytes."""
        return parse_memory(self.default_memory, service=None, key="default_memory")

    def tenant_policy_map(self) -> dict[str, ComposePolicy]:
        """``MOORAGE_TENANT_POLICIES`` as tenant → policy.

        Raises:
            ValueError: not a JSON object of tenant → policy object, an invalid tenant name, an
                unknown field or a bad value (the message names the tenant and the field).
        """
        if not self.tenant_policies.strip():
            return {}
        try:
            raw = json.loads(self.tenant_policies)
        except json.JSONDecodeError as exc:
            raise ValueError(f"MOORAGE_TENANT_POLICIES is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError("MOORAGE_TENANT_POLICIES must be a JSON object of tenant → policy")
        policies: dict[str, ComposePolicy] = {}
        for tenant, body in raw.items():
            if not NAME_RE.match(tenant):
                raise ValueError(
                    f"MOORAGE_TENANT_POLICIES: {tenant!r} is not a tenant name "
                    "(lowercase letters, digits, dashes)"
                )
            try:
                policies[tenant] = ComposePolicy.model_validate(body)
            except ValidationError as exc:
                error = exc.errors()[0]
                field = ".".join(str(part) for part in error["loc"]) or "(policy)"
                raise ValueError(
                    f"MOORAGE_TENANT_POLICIES: tenant {tenant!r}, field {field!r}: {error['msg']}"
                ) from None
        return policies

    def policy_for(self, tenant: str) -> ComposePolicy:
        """The Compose policy of ``tenant`` (the default policy when it has none).

        Raises:
            ValueError: ``MOORAGE_TENANT_POLICIES`` is invalid.
        """
        return self.tenant_policy_map().get(tenant, ComposePolicy())

    def resolved_router_dir(self) -> Path:
        """Where the router keeps its files."""
        return (self.router_dir or self.data_dir / f"router-{self.router}").resolve()

    def port_range(self) -> tuple[int, int]:
        """``route_ports`` as (first, last).

        Raises:
            ValueError: not ``first-last``.
        """
        return _port_range(self.route_ports, "MOORAGE_ROUTE_PORTS", "21000-21999")

    def replica_port_range(self) -> tuple[int, int]:
        """``replica_ports`` as (first, last).

        Raises:
            ValueError: not ``first-last``, or overlapping ``route_ports``.
        """
        first, last = _port_range(self.replica_ports, "MOORAGE_REPLICA_PORTS", "17000-19999")
        routes = self.port_range()
        if first <= routes[1] and routes[0] <= last:
            raise ValueError(
                f"MOORAGE_REPLICA_PORTS {self.replica_ports} overlaps MOORAGE_ROUTE_PORTS "
                f"{self.route_ports}: a replica would take a route's listen port"
            )
        return first, last

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
            if ":" in user:  # k=t/u:viewer:deployer was user "u:viewer", a deployer
                raise ValueError(f"MOORAGE_API_KEYS: user {user!r} has a ':' (one role at most)")
            if key in keys:  # the later entry won, silently (never print the key: a secret)
                raise ValueError(
                    f"MOORAGE_API_KEYS: a key is given twice (tenants {keys[key].tenant_id!r} "
                    f"and {tenant!r})"
                )
            keys[key] = ApiKey(tenant_id=tenant, user_id=user, role=role)
        return keys


def settings_error(exc: ValidationError) -> str:
    """A :class:`Settings` refusal as one line naming each variable at fault.

    Never the value: ``MOORAGE_API_KEYS`` holds secrets.
    """
    parts = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["loc"]:
            env = f"MOORAGE_{str(error['loc'][0]).upper()}"
            if not message.startswith(env):
                message = f"{env}: {message}"
        parts.append(message)
    return "; ".join(parts)


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()


def _port_range(value: str, name: str, example: str) -> tuple[int, int]:
    first, _, last = value.partition("-")
    if (
        not first.isascii()
        or not first.isdigit()
        or not last.isascii()
        or not last.isdigit()
        or not 0 < int(first) <= int(last) <= 65535
    ):
        raise ValueError(f"{name} must look like {example}")
    return int(first), int(last)


def replica_port_refusal(published: int | None, replica_ports: tuple[int, int]) -> str | None:
    """Why a route may not listen on its Compose ``published`` port; None when it may.

    A route's listen port inside ``MOORAGE_REPLICA_PORTS`` could take the port of a stopped
    replica (it keeps its port without binding it), whose restart would then fail.
    """
    first, last = replica_ports
    if published is None or not first <= published <= last:
        return None
    return (
        f"published port {published} is inside MOORAGE_REPLICA_PORTS ({first}-{last}), where "
        "replicas get their ports: publish it outside that range"
    )
