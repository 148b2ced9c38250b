"""The typed specs a Compose file is parsed into (serialized into Temporal histories).

Class names, fields and defaults are part of saved workflow histories: change them only with a
replay test.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

RouteMode = Literal["http", "tcp"]
"""How the traffic router serves a route: HTTP requests, or TCP connections passed through."""

PREVIEW_PREFIX = "preview-of-"
"""Preview routes are routes of a pseudo-service ``preview-of-<service>`` (blue-green); no
service of a project may be named so."""


class PortSpec(BaseModel):
    """A container port to publish."""

    target: int = Field(ge=1, le=65535)
    """The port inside the container."""
    protocol: str = "tcp"
    published: int | None = Field(default=None, ge=1, le=65535)
    """The host port the Compose file asks for, if any (kept for the traffic router)."""

    @property
    def key(self) -> str:
        """Docker's name for the port, e.g. ``80/tcp``."""
        return f"{self.target}/{self.protocol}"


class ProbeSpec(BaseModel):
    """A readiness probe Moorage runs itself, through the replica's published port."""

    type: str = "http"
    """``http`` or ``tcp``."""
    port: int
    """The container port to probe (it must be in ``ports``)."""
    path: str = "/"
    status: int = 200
    """The HTTP status that means ready."""
    interval_s: float = 1.0
    timeout_s: float = 2.0


class HealthcheckSpec(BaseModel):
    """A Compose healthcheck, converted to Docker's units."""

    test: list[str] | None = None
    """``["CMD", …]`` / ``["CMD-SHELL", "…"]`` / ``["NONE"]``; None keeps the image's."""
    interval_s: float | None = None
    timeout_s: float | None = None
    retries: int | None = None
    start_period_s: float | None = None
    disable: bool = False


class DeviceSpec(BaseModel):
    """A host device made available inside the container."""

    host_path: str
    container_path: str
    permissions: str = "rwm"
    """cgroup permissions: any of ``r`` (read), ``w`` (write), ``m`` (mknod)."""


class MountSpec(BaseModel):
    """A filesystem mounted into the container (a service's ``volumes`` and ``tmpfs``)."""

    type: Literal["volume", "bind", "tmpfs"]
    source: str | None = None
    """``volume``: the volume's name as declared in the top-level ``volumes`` (None: an anonymous
    volume); ``bind``: the normalised absolute host path; ``tmpfs``: None."""
    target: str
    """The absolute path inside the container."""
    read_only: bool = False
    tmpfs_size_bytes: int | None = None
    """``tmpfs`` only: its size limit (None: the kernel's default)."""
    nocopy: bool = False
    """``volume`` only: do not copy the image's files at ``target`` into a new volume."""
    driver_opts: dict[str, str] = Field(default_factory=dict)
    """``volume`` only: the named volume's ``local`` driver options, from its declaration."""
    volume_labels: dict[str, str] = Field(default_factory=dict)
    """``volume`` only: the named volume's labels, from its declaration (they were dropped)."""


class VolumeSpec(BaseModel):
    """A named volume declared in the top-level ``volumes`` (always the ``local`` driver)."""

    name: str
    """The name the Compose file gives it (Moorage scopes the Docker volume to the project)."""
    driver_opts: dict[str, str] = Field(default_factory=dict)
    """Options of the ``local`` driver; only a tmpfs (``type: tmpfs``) is accepted."""
    labels: dict[str, str] = Field(default_factory=dict)


class ServiceSpec(BaseModel):
    """One service of a project, as Moorage runs it."""

    name: str
    image: str
    command: list[str] | str | None = None
    entrypoint: list[str] | str | None = None
    environment: dict[str, str] = Field(default_factory=dict)
    ports: list[PortSpec] = Field(default_factory=list)
    healthcheck: HealthcheckSpec | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    depends_on: list[str] = Field(default_factory=list)
    replicas: int = 1
    stop_grace_period_s: float = 10.0
    stop_signal: str | None = None
    working_dir: str | None = None
    user: str | None = None
    probe: ProbeSpec | None = None
    """Moorage's own readiness probe (``x-moorage.probe``), used instead of Docker's health."""
    min_ready_seconds: float = 0.0
    """How long a replica must stay ready before it counts (``x-moorage.min_ready_seconds``)."""
    health_check_delay: float | None = None
    """``x-moorage.health_check_delay``: this service's delay before its first health check
    (None: the deployment's ``health_check_delay``)."""
    health_check_retries: int | None = None
    """``x-moorage.health_check_retries``: this service's health checks' worth of time (None: the
    deployment's ``health_check_retries``)."""
    restart: str = "no"
    """``restart``: the engine restarts a replica that exits (``always``, ``on-failure``,
    ``unless-stopped``) between deployments; during one, a restart fails the health gate."""
    restart_max_retries: int = 0
    """``on-failure:N``: at most N restarts (0: no limit)."""
    route: bool = True
    """``x-moorage.route``: false keeps a service with a TCP port off the traffic router."""
    route_mode: RouteMode = "http"
    """``x-moorage.route: tcp``: the router passes connections through, not HTTP requests (a
    database, a message broker: what does not speak HTTP)."""
    privileged: bool = False
    cap_add: list[str] = Field(default_factory=list)
    """Capabilities to add, upper-case without ``CAP_``."""
    cap_drop: list[str] = Field(default_factory=list)
    """Capabilities to drop, upper-case without ``CAP_`` (``ALL`` drops every one)."""
    devices: list[DeviceSpec] = Field(default_factory=list)
    mounts: list[MountSpec] = Field(default_factory=list)
    """``volumes`` and ``tmpfs``, in file order."""
    mem_limit_bytes: int | None = None
    """Memory limit (``mem_limit`` or ``deploy.resources.limits.memory``); None: the default."""
    cpus: float | None = None
    """CPU limit (``cpus`` or ``deploy.resources.limits.cpus``); None: the default."""
    pids_limit: int | None = None
    """Process limit (``pids_limit`` or ``deploy.resources.limits.pids``); None: the default."""

    def route_port(self) -> PortSpec | None:
        """The container port the traffic router sends requests to: the first TCP port.

        None: the service has no route (no TCP port, or ``x-moorage.route: false``).
        """
        if not self.route:
            return None
        return next((p for p in self.ports if p.protocol == "tcp"), None)


class ProjectSpec(BaseModel):
    """A parsed project: its services in start order (every service after its dependencies)."""

    services: list[ServiceSpec]
    volumes: list[str] = Field(default_factory=list)
    """Names of the named volumes the top-level ``volumes`` declares."""
    volume_specs: list[VolumeSpec] = Field(default_factory=list)
    """The same volumes with their driver options and labels, in the same order."""

    def service(self, name: str) -> ServiceSpec:
        """The service called ``name``.

        Raises:
            KeyError: no such service.
        """
        for spec in self.services:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        """Service names in start order."""
        return [s.name for s in self.services]

    def depended_on(self, name: str) -> bool:
        """Whether another service depends on ``name`` (it must be healthy before they start)."""
        return any(name in other.depends_on for other in self.services)

    @property
    def routed(self) -> set[str]:
        """Names of the services the traffic router routes (see ``ServiceSpec.route_port``)."""
        return {s.name for s in self.services if s.route_port() is not None}
