"""Compose file → project spec.

Allow-list parsing: every key Moorage understands is turned into a typed field; every other key is
refused with an error that names the service and the key, never silently dropped.

What could hand a tenant the host (privileged containers, extra capabilities, bind mounts, host
devices) is refused by default; an operator allows it per tenant with a :class:`ComposePolicy`
(``MOORAGE_TENANT_POLICIES``).

``${VAR}`` interpolation follows the Compose specification, but variables come only from the
caller (never from the server's environment, which holds secrets), and it runs before validation,
so an interpolated value is checked like a literal one.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal, NoReturn

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_COMPOSE_BYTES = 256 * 1024
"""Largest Compose text accepted."""
MAX_INTERPOLATED_BYTES = 1024 * 1024
"""Largest total size of the strings interpolation produces (a variable used many times, or in
strings YAML aliases repeat, must not blow memory up)."""
MAX_INTERPOLATED_VALUES = 250_000
"""Most values interpolation visits (YAML aliases can repeat a node exponentially often)."""
MAX_SERVICES = 50
"""Most services one project may hold."""
MIN_MEMORY_BYTES = 6 * 1024 * 1024
"""Docker's smallest memory limit."""
MAX_MEMORY_BYTES = 2**62
"""Largest memory size accepted (Docker keeps sizes in a signed 64-bit integer)."""
MAX_CPUS = 1024.0
MAX_PIDS = 4_194_304
"""Linux's largest ``pid_max``."""

SAFE_CAPABILITIES = frozenset(
    {
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "NET_RAW",
        "SYS_CHROOT",
        "MKNOD",
        "AUDIT_WRITE",
        "SETFCAP",
    }
)
"""Capabilities ``cap_add`` may always name: Docker grants them by default, so re-adding one (after
a ``cap_drop: [ALL]``) gives nothing a default container does not have."""
POLICY_HINT = "allowed per tenant with MOORAGE_TENANT_POLICIES"

_SERVICE_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_MEMORY_RE = re.compile(r"(\d+(?:\.\d+)?) ?(?:([kmgt])(?:i?b)?|b)?", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_CAPABILITY_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_VOLUME_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")

TOP_LEVEL_KEYS = frozenset({"services", "version", "name", "volumes"})
SERVICE_KEYS = frozenset(
    {
        "image",
        "command",
        "entrypoint",
        "environment",
        "ports",
        "expose",
        "healthcheck",
        "labels",
        "depends_on",
        "deploy",
        "stop_grace_period",
        "stop_signal",
        "working_dir",
        "user",
        "privileged",
        "cap_add",
        "cap_drop",
        "devices",
        "volumes",
        "tmpfs",
        "mem_limit",
        "cpus",
        "pids_limit",
    }
)
DEPLOY_KEYS = frozenset({"replicas", "resources"})
HEALTHCHECK_KEYS = frozenset({"test", "interval", "timeout", "retries", "start_period", "disable"})
MAX_REPLICAS = 50


class ComposeError(ValueError):
    """A Compose file Moorage refuses.

    Attributes:
        service: the service at fault, when the fault is inside one.
        key: the key at fault (dotted for nested keys, e.g. ``deploy.resources``).
    """

    def __init__(self, message: str, *, service: str | None = None, key: str | None = None):
        where = []
        if service is not None:
            where.append(f"service {service!r}")
        if key is not None:
            where.append(f"key {key!r}")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + message)
        self.service = service
        self.key = key


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


class VolumeSpec(BaseModel):
    """A named volume declared in the top-level ``volumes`` (always the ``local`` driver)."""

    name: str
    """The name the Compose file gives it (Moorage scopes the Docker volume to the project)."""
    driver_opts: dict[str, str] = Field(default_factory=dict)
    """Options of the ``local`` driver; only a tmpfs (``type: tmpfs``) is accepted."""
    labels: dict[str, str] = Field(default_factory=dict)


class ComposePolicy(BaseModel):
    """What an operator allows one tenant beyond the safe default.

    The default policy refuses everything that could hand a container the host.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    privileged: bool = False
    """Allow ``privileged: true`` (root on the host)."""
    cap_add: list[str] = Field(default_factory=list)
    """Capabilities ``cap_add`` may name beyond :data:`SAFE_CAPABILITIES` (e.g. ``NET_ADMIN``)."""
    bind_paths: list[str] = Field(default_factory=list)
    """Absolute host path prefixes that may be bind-mounted: a path is allowed when it equals a
    prefix or lies below one once normalised; ``/`` allows every path."""
    devices: list[str] = Field(default_factory=list)
    """Host device paths ``devices`` may name (e.g. ``/dev/fuse``)."""
    unrestricted: bool = False
    """Allow everything above (a fully trusted tenant). The project workflow parses with it:
    the text it holds was checked against the tenant's policy when it was submitted."""

    @field_validator("cap_add")
    @classmethod
    def _normalise_capabilities(cls, value: list[str]) -> list[str]:
        names = []
        for item in value:
            name = normalise_capability(item)
            if name is None:
                raise ValueError(f"{item!r} is not a capability name")
            names.append(name)
        return names

    @field_validator("bind_paths", "devices")
    @classmethod
    def _normalise_paths(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item.startswith("/"):
                raise ValueError(f"{item!r} is not an absolute path")
        return [normalise_host_path(item) for item in value]

    def allows_path(self, path: str) -> bool:
        """Whether ``path`` (normalised) is equal to or below one of ``bind_paths``."""
        return self.unrestricted or any(
            prefix == "/" or path == prefix or path.startswith(prefix + "/")
            for prefix in self.bind_paths
        )


def normalise_capability(name: str) -> str | None:
    """``cap_chown`` / ``CAP_CHOWN`` / ``chown`` → ``CHOWN``; None when not a capability name."""
    upper = name.strip().upper()
    upper = upper.removeprefix("CAP_")
    return upper if _CAPABILITY_RE.match(upper) else None


def normalise_host_path(path: str) -> str:
    """Collapse ``.``, ``..`` and repeated slashes of an absolute host path.

    ``..`` cannot climb above ``/``, so ``/srv/data/../../etc`` is ``/etc``.
    """
    norm = posixpath.normpath(path)
    # POSIX lets normpath keep a leading '//'; the kernel (and Docker) read it as '/'.
    return "/" + norm.lstrip("/")


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
        """The container port the traffic router sends requests to: the first TCP port."""
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


def parse_duration(value: Any, *, service: str, key: str) -> float:
    """Parse a Compose duration (``1m30s``, ``500ms``, ``10``) into seconds.

    Raises:
        ComposeError: not a duration.
    """
    if isinstance(value, bool):
        raise ComposeError(f"{value!r} is not a duration", service=service, key=key)
    if isinstance(value, int | float):
        # YAML's .inf / .nan are floats too; they would crash the Docker call much later.
        if not math.isfinite(value) or value < 0:
            raise ComposeError(
                "a duration must be a finite, non-negative number", service=service, key=key
            )
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        parts = _DURATION_RE.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    raise ComposeError(
        f"{value!r} is not a duration like '10s' or '1m30s'", service=service, key=key
    )


def _memory_bytes(value: Any, *, service: str | None, key: str) -> int:
    """A Docker memory size (``512m``, ``1g``, ``1.5GiB``, bytes as an integer) in bytes."""
    size: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _MEMORY_RE.fullmatch(value.strip())):
        number, unit = match[1], _MEMORY_UNITS[(match[2] or "").lower()]
        # Whole numbers stay exact; Docker's units are binary (1k = 1024).
        size = int(number) * unit if "." not in number else int(float(number) * unit)
    if size is None:
        raise ComposeError(
            f"{value!r} is not a memory size like '512m' or '1g'", service=service, key=key
        )
    if size > MAX_MEMORY_BYTES:
        raise ComposeError(f"{value!r} is too large", service=service, key=key)
    return size


def parse_memory(value: Any, *, service: str | None, key: str) -> int:
    """Parse a memory limit the way Docker does, into bytes.

    Accepts an integer (bytes) or a number with a binary unit ``b``, ``k``, ``m``, ``g``, ``t``
    (case-insensitive, optionally followed by ``b`` or ``ib``: ``512m``, ``512MB``, ``512MiB``).

    Args:
        value: the value from the Compose file or a setting.
        service: the service it belongs to (None for a setting).
        key: the key it was given under, for the error.

    Returns:
        The size in bytes, at least :data:`MIN_MEMORY_BYTES`.

    Raises:
        ComposeError: not a memory size, or below Docker's 6 MiB minimum.
    """
    size = _memory_bytes(value, service=service, key=key)
    if size < MIN_MEMORY_BYTES:
        raise ComposeError(
            f"{value!r} is below Docker's minimum of 6 MiB ('6m')", service=service, key=key
        )
    return size


def _str_list(value: Any, *, service: str, key: str) -> list[str] | str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return [str(v) for v in value]
    raise ComposeError("must be a string or a list of strings", service=service, key=key)


def _mapping(value: Any, *, service: str | None, key: str) -> dict[str, str]:
    """Compose mapping-or-list (``environment``, ``labels``) → dict of strings."""
    result: dict[str, str] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            if v is None:
                raise ComposeError(
                    f"{k!r} has no value; Moorage does not read the server's environment",
                    service=service,
                    key=f"{key}.{k}",
                )
            if isinstance(v, dict | list):
                raise ComposeError("values must be strings", service=service, key=f"{key}.{k}")
            result[str(k)] = str(v).lower() if isinstance(v, bool) else str(v)
        return result
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, str) or "=" not in item or item.startswith("="):
                bare_name = isinstance(item, str) and item and "=" not in item
                raise ComposeError(
                    f"entry {item!r} must look like NAME=value; Moorage does not read the "
                    "server's environment",
                    service=service,
                    key=f"{key}.{item}" if bare_name else key,
                )
            k, v = item.split("=", 1)
            result[k] = v
        return result
    raise ComposeError("must be a mapping or a list of NAME=value", service=service, key=key)


def _parse_port(item: Any, *, service: str) -> PortSpec:
    key = "ports"
    if isinstance(item, dict):
        unknown = set(item) - {"target", "published", "protocol", "host_ip", "mode"}
        if unknown:
            raise ComposeError(
                "is not supported", service=service, key=f"ports.{sorted(unknown)[0]}"
            )
        if item.get("protocol", "tcp") not in ("tcp", "udp"):
            raise ComposeError(
                f"invalid protocol {item['protocol']!r}", service=service, key="ports.protocol"
            )
        if any(isinstance(item.get(k), bool) for k in ("target", "published")):
            raise ComposeError(f"invalid long-syntax port {item!r}", service=service, key=key)
        try:
            published = item.get("published")
            return PortSpec(
                target=int(item["target"]),
                protocol=str(item.get("protocol", "tcp")),
                published=int(published) if published is not None else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ComposeError(
                f"invalid long-syntax port {item!r}", service=service, key=key
            ) from exc
    if isinstance(item, bool) or not isinstance(item, int | str):
        raise ComposeError(f"invalid port {item!r}", service=service, key=key)
    text = str(item).strip()
    protocol = "tcp"
    if "/" in text:
        text, protocol = text.rsplit("/", 1)
    if protocol not in ("tcp", "udp"):
        raise ComposeError(f"invalid protocol {protocol!r}", service=service, key=key)
    parts = text.split(":")
    if (
        len(parts) > 3
        or any("-" in p for p in parts)
        or not all(p.isdigit() for p in parts[-2:] if p)
    ):
        raise ComposeError(
            f"invalid port {item!r} (port ranges are not supported)", service=service, key=key
        )
    try:
        target = int(parts[-1])
        published = int(parts[-2]) if len(parts) >= 2 and parts[-2] else None
        return PortSpec(target=target, protocol=protocol, published=published)
    except ValueError as exc:
        raise ComposeError(f"invalid port {item!r}", service=service, key=key) from exc


def _parse_healthcheck(value: Any, *, service: str) -> HealthcheckSpec:
    if not isinstance(value, dict):
        raise ComposeError("must be a mapping", service=service, key="healthcheck")
    for k in value:
        if k not in HEALTHCHECK_KEYS:
            raise ComposeError("is not supported", service=service, key=f"healthcheck.{k}")
    disable = value.get("disable", False)
    if not isinstance(disable, bool):
        raise ComposeError("must be true or false", service=service, key="healthcheck.disable")
    spec = HealthcheckSpec(disable=disable)
    test = value.get("test")
    if test is not None:
        if isinstance(test, str):
            spec.test = ["CMD-SHELL", test]
        elif isinstance(test, list) and test and all(isinstance(t, str) for t in test):
            if test[0] not in ("CMD", "CMD-SHELL", "NONE"):
                raise ComposeError(
                    "a list test must start with CMD, CMD-SHELL or NONE",
                    service=service,
                    key="healthcheck.test",
                )
            spec.test = list(test)
        else:
            raise ComposeError(
                "must be a string or a list", service=service, key="healthcheck.test"
            )
    for name in ("interval", "timeout", "start_period"):
        if name in value:
            setattr(
                spec,
                f"{name}_s",
                parse_duration(value[name], service=service, key=f"healthcheck.{name}"),
            )
    if "retries" in value:
        retries = value["retries"]
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ComposeError(
                "must be a non-negative integer", service=service, key="healthcheck.retries"
            )
        spec.retries = retries
    return spec


def _parse_depends_on(value: Any, *, service: str) -> list[str]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, dict):
        for dep, cond in value.items():
            if cond is not None and not isinstance(cond, dict):
                raise ComposeError("invalid entry", service=service, key=f"depends_on.{dep}")
            for k in cond or {}:
                if k not in ("condition", "restart", "required"):
                    raise ComposeError(
                        "is not supported", service=service, key=f"depends_on.{dep}.{k}"
                    )
        return [str(d) for d in value]
    raise ComposeError(
        "must be a list or a mapping of service names", service=service, key="depends_on"
    )


# --- privileges, devices, mounts, resources -----------------------------------------------------

_ENGINE_SOCKETS = frozenset({"docker.sock", "containerd.sock", "podman.sock"})
_SHORT_VOLUME_OPTIONS = frozenset({"ro", "rw", "nocopy", "cached", "delegated", "consistent"})
LONG_VOLUME_KEYS = frozenset(
    {"type", "source", "target", "read_only", "consistency", "volume", "bind", "tmpfs"}
)
VOLUME_KEYS = frozenset({"driver", "driver_opts", "labels", "external", "name"})


def _capabilities(value: Any, *, service: str, key: str) -> list[str]:
    if not isinstance(value, list):
        raise ComposeError("must be a list of capability names", service=service, key=key)
    names: list[str] = []
    for item in value:
        name = normalise_capability(item) if isinstance(item, str) else None
        if name is None:
            raise ComposeError(f"{item!r} is not a capability name", service=service, key=key)
        if name not in names:
            names.append(name)
    return names


def _is_permissions(text: str) -> bool:
    return bool(text) and set(text) <= set("rwm") and len(set(text)) == len(text)


def _parse_device(item: Any, *, service: str, policy: ComposePolicy) -> DeviceSpec:
    """``/dev/x[:/dev/y][:rwm]`` or ``{source, target, permissions}``."""
    key = "devices"
    host: Any
    container: Any
    permissions: Any = "rwm"
    if isinstance(item, dict):
        unknown = sorted(str(k) for k in item if k not in ("source", "target", "permissions"))
        if unknown:
            raise ComposeError("is not supported", service=service, key=f"devices.{unknown[0]}")
        host = item.get("source")
        container = item.get("target", host)
        permissions = item.get("permissions", "rwm")
    elif isinstance(item, str) and 1 <= len(parts := item.split(":")) <= 3:
        host = container = parts[0]
        if len(parts) == 3:
            container, permissions = parts[1], parts[2]
        elif len(parts) == 2 and _is_permissions(parts[1]):
            permissions = parts[1]
        elif len(parts) == 2:
            container = parts[1]
    else:
        raise ComposeError(f"invalid device {item!r}", service=service, key=key)
    if not (
        isinstance(host, str)
        and isinstance(container, str)
        and host.startswith("/")
        and container.startswith("/")
    ):
        raise ComposeError(
            f"invalid device {item!r}: host and container paths must be absolute",
            service=service,
            key=key,
        )
    if not isinstance(permissions, str) or not _is_permissions(permissions):
        raise ComposeError(
            f"invalid device {item!r}: permissions are made of r, w and m",
            service=service,
            key=key,
        )
    host_path = normalise_host_path(host)
    if host_path not in policy.devices and not policy.unrestricted:
        raise ComposeError(
            f"host device {host_path!r} is refused by default; {POLICY_HINT} ('devices')",
            service=service,
            key=key,
        )
    return DeviceSpec(
        host_path=host_path, container_path=posixpath.normpath(container), permissions=permissions
    )


def _parse_privileges(raw: dict[str, Any], spec: ServiceSpec, policy: ComposePolicy) -> None:
    """``privileged``, ``cap_add``, ``cap_drop``, ``devices``: refused unless safe or allowed."""
    name = spec.name
    if raw.get("privileged") is not None:
        privileged = raw["privileged"]
        if not isinstance(privileged, bool):
            raise ComposeError("must be true or false", service=name, key="privileged")
        if privileged and not (policy.privileged or policy.unrestricted):
            raise ComposeError(
                f"a privileged container is root on the host: refused by default; {POLICY_HINT} "
                "('privileged': true)",
                service=name,
                key="privileged",
            )
        spec.privileged = privileged
    if raw.get("cap_add") is not None:
        spec.cap_add = _capabilities(raw["cap_add"], service=name, key="cap_add")
        allowed = SAFE_CAPABILITIES | set(policy.cap_add)
        for cap in spec.cap_add:
            if cap not in allowed and not policy.unrestricted:
                raise ComposeError(
                    f"capability {cap} is refused by default; {POLICY_HINT} ('cap_add')",
                    service=name,
                    key="cap_add",
                )
    if raw.get("cap_drop") is not None:
        # Dropping a capability only takes power away: any name, and ALL, is fine.
        spec.cap_drop = _capabilities(raw["cap_drop"], service=name, key="cap_drop")
    if raw.get("devices") is not None:
        if not isinstance(raw["devices"], list):
            raise ComposeError("must be a list", service=name, key="devices")
        spec.devices = [_parse_device(d, service=name, policy=policy) for d in raw["devices"]]


def _target(value: Any, *, service: str, key: str) -> str:
    """An absolute container path to mount at (not ``/`` itself)."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise ComposeError(
            f"the target {value!r} must be an absolute container path", service=service, key=key
        )
    target = normalise_host_path(value)
    if target == "/":
        raise ComposeError("cannot mount over the container's '/'", service=service, key=key)
    return target


def _bind_source(source: str, *, service: str, policy: ComposePolicy) -> str:
    """The normalised host path of a bind mount the policy allows.

    Raises:
        ComposeError: a home or relative path, or a host path outside the policy's bind_paths.
    """
    key = "volumes"
    if source.startswith("~"):
        raise ComposeError(
            f"bind mount of {source!r} is refused: there is no home directory on the server",
            service=service,
            key=key,
        )
    if not source.startswith("/"):
        raise ComposeError(
            f"bind mount of the relative path {source!r} is refused: there is no project "
            "directory on the server (use a named volume)",
            service=service,
            key=key,
        )
    path = normalise_host_path(source)
    if policy.allows_path(path):
        return path
    if posixpath.basename(path) in _ENGINE_SOCKETS:
        raise ComposeError(
            f"bind mount of {path!r} is refused: mounting the Docker engine socket hands out "
            "root on the host",
            service=service,
            key=key,
        )
    raise ComposeError(
        f"bind mount of host path {path!r} is refused by default; {POLICY_HINT} ('bind_paths')",
        service=service,
        key=key,
    )


def _named_volume(source: str, *, service: str, key: str, volumes: frozenset[str]) -> str:
    if source not in volumes:
        raise ComposeError(
            f"volume {source!r} is not declared in the top-level 'volumes'",
            service=service,
            key=key,
        )
    return source


def _short_volume(
    item: str, *, service: str, policy: ComposePolicy, volumes: frozenset[str]
) -> MountSpec:
    """``TARGET`` (anonymous volume) or ``SOURCE:TARGET[:OPTIONS]``."""
    key = "volumes"
    parts = item.split(":")
    if len(parts) > 3 or not all(parts):
        raise ComposeError(
            f"invalid volume {item!r}: write SOURCE:TARGET[:ro] or TARGET", service=service, key=key
        )
    if len(parts) == 1:
        return MountSpec(type="volume", target=_target(item, service=service, key=key))
    source, target = parts[0], _target(parts[1], service=service, key=key)
    options = parts[2].split(",") if len(parts) == 3 else []
    for option in options:
        if option not in _SHORT_VOLUME_OPTIONS:
            raise ComposeError(
                f"volume option {option!r} is not supported", service=service, key=key
            )
    if "ro" in options and "rw" in options:
        raise ComposeError(f"{item!r} is both 'ro' and 'rw'", service=service, key=key)
    read_only = "ro" in options
    # Compose's rule: a source that looks like a path is a bind mount, anything else a volume name.
    if source.startswith(("/", ".", "~")) or "/" in source:
        if "nocopy" in options:
            raise ComposeError("'nocopy' applies to volumes only", service=service, key=key)
        return MountSpec(
            type="bind",
            source=_bind_source(source, service=service, policy=policy),
            target=target,
            read_only=read_only,
        )
    return MountSpec(
        type="volume",
        source=_named_volume(source, service=service, key=key, volumes=volumes),
        target=target,
        read_only=read_only,
        nocopy="nocopy" in options,
    )


def _options(
    item: dict[Any, Any], section: str, allowed: set[str], *, service: str
) -> dict[str, Any]:
    """The ``volume`` / ``bind`` / ``tmpfs`` sub-mapping of a long-syntax mount."""
    value = item.get(section)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ComposeError("must be a mapping", service=service, key=f"volumes.{section}")
    for k in value:
        if k not in allowed:
            raise ComposeError(
                "is not supported by Moorage", service=service, key=f"volumes.{section}.{k}"
            )
    return value


def _long_volume(
    item: dict[Any, Any], *, service: str, policy: ComposePolicy, volumes: frozenset[str]
) -> MountSpec:
    """``{type, source, target, read_only, volume, bind, tmpfs}``."""
    for k in item:
        if k not in LONG_VOLUME_KEYS:
            raise ComposeError("is not supported by Moorage", service=service, key=f"volumes.{k}")
    kind = item.get("type")
    if kind not in ("volume", "bind", "tmpfs"):
        raise ComposeError(
            f"mount type {kind!r} is not supported (use volume, bind or tmpfs)",
            service=service,
            key="volumes.type",
        )
    for section in ("volume", "bind", "tmpfs"):
        if section in item and section != kind:
            raise ComposeError(
                f"does not apply to a {kind} mount", service=service, key=f"volumes.{section}"
            )
    target = _target(item.get("target"), service=service, key="volumes.target")
    read_only = item.get("read_only", False)
    if not isinstance(read_only, bool):
        raise ComposeError("must be true or false", service=service, key="volumes.read_only")
    if not isinstance(item.get("consistency", ""), str):  # macOS only; nothing to do on Linux
        raise ComposeError("must be a string", service=service, key="volumes.consistency")
    source = item.get("source")
    if source is not None and not isinstance(source, str):
        raise ComposeError("must be a string", service=service, key="volumes.source")
    if kind == "bind":
        propagation = _options(item, "bind", {"propagation"}, service=service).get("propagation")
        # Docker's default; any other propagation lets mounts cross between host and container.
        if propagation not in (None, "private", "rprivate"):
            raise ComposeError(
                f"propagation {propagation!r} is not supported (only rprivate)",
                service=service,
                key="volumes.bind.propagation",
            )
        if source is None:
            raise ComposeError("a bind mount needs a 'source'", service=service, key="volumes")
        return MountSpec(
            type="bind",
            source=_bind_source(source, service=service, policy=policy),
            target=target,
            read_only=read_only,
        )
    if kind == "tmpfs":
        if source is not None:
            raise ComposeError("a tmpfs takes no 'source'", service=service, key="volumes.source")
        size = _options(item, "tmpfs", {"size"}, service=service).get("size")
        size_bytes = None
        if size is not None:
            size_bytes = _memory_bytes(size, service=service, key="volumes.tmpfs.size")
            if size_bytes <= 0:
                raise ComposeError("must be positive", service=service, key="volumes.tmpfs.size")
        return MountSpec(
            type="tmpfs", target=target, read_only=read_only, tmpfs_size_bytes=size_bytes
        )
    nocopy = _options(item, "volume", {"nocopy"}, service=service).get("nocopy", False)
    if not isinstance(nocopy, bool):
        raise ComposeError("must be true or false", service=service, key="volumes.volume.nocopy")
    return MountSpec(
        type="volume",
        source=(
            None
            if source is None
            else _named_volume(source, service=service, key="volumes.source", volumes=volumes)
        ),
        target=target,
        read_only=read_only,
        nocopy=nocopy,
    )


def _parse_mounts(
    raw: dict[str, Any], spec: ServiceSpec, policy: ComposePolicy, volumes: frozenset[str]
) -> None:
    """A service's ``volumes`` (every Compose syntax) and ``tmpfs``."""
    name = spec.name
    if raw.get("volumes") is not None:
        if not isinstance(raw["volumes"], list):
            raise ComposeError("must be a list", service=name, key="volumes")
        for item in raw["volumes"]:
            if isinstance(item, str):
                mount = _short_volume(item, service=name, policy=policy, volumes=volumes)
            elif isinstance(item, dict):
                mount = _long_volume(item, service=name, policy=policy, volumes=volumes)
            else:
                raise ComposeError(f"invalid volume {item!r}", service=name, key="volumes")
            spec.mounts.append(mount)
    if raw.get("tmpfs") is not None:
        paths = raw["tmpfs"]
        if isinstance(paths, str):
            paths = [paths]
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise ComposeError(
                "must be a container path or a list of them", service=name, key="tmpfs"
            )
        for path in paths:
            if ":" in path:
                raise ComposeError(
                    f"{path!r}: tmpfs options are not supported here; use a long-syntax "
                    "volume (type: tmpfs, tmpfs: {size: ...})",
                    service=name,
                    key="tmpfs",
                )
            spec.mounts.append(
                MountSpec(type="tmpfs", target=_target(path, service=name, key="tmpfs"))
            )
    targets: set[str] = set()
    for mount in spec.mounts:
        if mount.target in targets:
            raise ComposeError(
                f"two mounts at {mount.target!r}",
                service=name,
                key="tmpfs" if mount.type == "tmpfs" and raw.get("tmpfs") else "volumes",
            )
        targets.add(mount.target)


def _cpus(value: Any, *, service: str, key: str) -> float:
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or not 0.01 <= number <= MAX_CPUS:
        raise ComposeError(
            f"must be a number of CPUs from 0.01 to {MAX_CPUS:g}", service=service, key=key
        )
    return number


def _pids(value: Any, *, service: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_PIDS:
        raise ComposeError(f"must be an integer from 1 to {MAX_PIDS}", service=service, key=key)
    return value


def _parse_resources(raw: dict[str, Any], spec: ServiceSpec) -> None:
    """``mem_limit``, ``cpus``, ``pids_limit`` and ``deploy.resources.limits``."""
    name = spec.name
    if raw.get("mem_limit") is not None:
        spec.mem_limit_bytes = parse_memory(raw["mem_limit"], service=name, key="mem_limit")
    if raw.get("cpus") is not None:
        spec.cpus = _cpus(raw["cpus"], service=name, key="cpus")
    if raw.get("pids_limit") is not None:
        spec.pids_limit = _pids(raw["pids_limit"], service=name, key="pids_limit")
    deploy = raw.get("deploy")
    resources = deploy.get("resources") if isinstance(deploy, dict) else None
    if resources is None:
        return
    if not isinstance(resources, dict):
        raise ComposeError("must be a mapping", service=name, key="deploy.resources")
    for k in resources:
        if k == "reservations":
            raise ComposeError(
                "is not supported: Moorage sets limits (deploy.resources.limits), not reservations",
                service=name,
                key="deploy.resources.reservations",
            )
        if k != "limits":
            raise ComposeError(
                "is not supported by Moorage", service=name, key=f"deploy.resources.{k}"
            )
    limits = resources.get("limits")
    if limits is None:
        return
    if not isinstance(limits, dict):
        raise ComposeError("must be a mapping", service=name, key="deploy.resources.limits")
    parsers: tuple[tuple[str, str, str, Callable[..., float]], ...] = (
        ("memory", "mem_limit", "mem_limit_bytes", parse_memory),
        ("cpus", "cpus", "cpus", _cpus),
        ("pids", "pids_limit", "pids_limit", _pids),
    )
    known = {p[0] for p in parsers}
    for k in limits:
        if k not in known:
            raise ComposeError(
                "is not supported by Moorage", service=name, key=f"deploy.resources.limits.{k}"
            )
    for limit, short_key, field, parse in parsers:
        if limits.get(limit) is None:
            continue
        key = f"deploy.resources.limits.{limit}"
        value = parse(limits[limit], service=name, key=key)
        current = getattr(spec, field)
        if current is not None and current != value:
            raise ComposeError(
                f"disagrees with {short_key!r}; give the limit once", service=name, key=key
            )
        setattr(spec, field, value)


# --- top-level volumes and networks -------------------------------------------------------------


def _volume_driver_opts(value: Any, *, where: str) -> dict[str, str]:
    """Options of the ``local`` driver: only a tmpfs, never a host path, device or share."""
    key = f"{where}.driver_opts"
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ComposeError("must be a mapping", key=key)
    opts: dict[str, str] = {}
    for k, v in value.items():
        if v is None or isinstance(v, bool | dict | list):
            raise ComposeError("must be a string", key=f"{key}.{k}")
        opts[str(k)] = str(v)
    for k in opts:
        if k not in ("type", "o", "device"):
            raise ComposeError(
                "is not supported (the local driver may only make a tmpfs: type, o, device)",
                key=f"{key}.{k}",
            )
    if "bind" in opts.get("o", "").lower():
        raise ComposeError(
            f"o: {opts['o']!r} would bind-mount a host path into the volume; refused",
            key=f"{key}.o",
        )
    kind = opts.get("type")
    if kind is not None and kind != "tmpfs":
        what = "a bind mount of a host path" if kind == "none" else "a host device or share"
        raise ComposeError(
            f"type {kind!r} makes the volume {what}; only tmpfs is accepted", key=f"{key}.type"
        )
    device = opts.get("device")
    if device is not None and device != "tmpfs":
        raise ComposeError(
            f"device {device!r} mounts a host path or device; refused", key=f"{key}.device"
        )
    if kind is None and opts:
        raise ComposeError(
            "the local driver's options mount a host path or device unless type is tmpfs",
            key=f"{key}.type",
        )
    return opts


def _parse_volumes(value: Any) -> list[VolumeSpec]:
    """Top-level ``volumes``: named volumes of the ``local`` driver that Moorage creates."""
    if value is None:
        return []
    if not isinstance(value, dict):
        raise ComposeError("must be a mapping of volume names", key="volumes")
    specs: list[VolumeSpec] = []
    for raw_name, body in value.items():
        name = str(raw_name)
        where = f"volumes.{name}"
        if not _VOLUME_NAME_RE.match(name):
            raise ComposeError("volume names may hold letters, digits, '_', '.', '-'", key=where)
        body = {} if body is None else body
        if not isinstance(body, dict):
            raise ComposeError("must be a mapping", key=where)
        for k in body:
            if k == "external" and body[k] is not False:
                raise ComposeError(
                    "external volumes are not created by Moorage and are refused",
                    key=f"{where}.external",
                )
            if k == "name":
                raise ComposeError(
                    "is not supported: Moorage names volumes after the project, so that one "
                    "project never reaches another's",
                    key=f"{where}.name",
                )
            if k not in VOLUME_KEYS:
                raise ComposeError("is not supported by Moorage", key=f"{where}.{k}")
        driver = body.get("driver", "local")
        if driver != "local":
            raise ComposeError(
                f"only the 'local' driver is supported, not {driver!r}", key=f"{where}.driver"
            )
        labels: dict[str, str] = {}
        if body.get("labels") is not None:
            labels = _mapping(body["labels"], service=None, key=f"{where}.labels")
            for label in labels:
                if label.startswith("moorage."):
                    raise ComposeError(
                        "labels starting with 'moorage.' are reserved",
                        key=f"{where}.labels.{label}",
                    )
        opts = _volume_driver_opts(body.get("driver_opts"), where=where)
        specs.append(VolumeSpec(name=name, driver_opts=opts, labels=labels))
    return specs


def _refuse_networks(value: Any) -> NoReturn:
    """Top-level ``networks`` is refused; an external one with its own reason.

    Raises:
        ComposeError: always.
    """
    if isinstance(value, dict):
        for name, body in value.items():
            if isinstance(body, dict) and body.get("external") not in (None, False):
                raise ComposeError(
                    "external networks are not created by Moorage and are refused",
                    key=f"networks.{name}.external",
                )
    raise ComposeError("top-level key 'networks' is not supported by Moorage", key="networks")


def _parse_service(
    name: str, raw: Any, *, policy: ComposePolicy, volumes: frozenset[str]
) -> ServiceSpec:
    if not _SERVICE_NAME_RE.match(name):
        raise ComposeError(
            "service names may hold letters, digits, '_', '.', '-' (at most 63)", service=name
        )
    if not isinstance(raw, dict):
        raise ComposeError("must be a mapping", service=name)
    if "build" in raw:
        if "image" not in raw:
            raise ComposeError(
                "has 'build' but no 'image': Moorage deploys images and does not build them; "
                "build and tag the image first, then name it in 'image'",
                service=name,
                key="build",
            )
        raise ComposeError(
            "is not supported: Moorage deploys the image named in 'image' and never builds; "
            "remove 'build'",
            service=name,
            key="build",
        )
    for key in raw:
        if key not in SERVICE_KEYS and not str(key).startswith("x-"):
            raise ComposeError("is not supported by Moorage", service=name, key=str(key))
    image = raw.get("image")
    if not isinstance(image, str) or not image.strip():
        raise ComposeError("every service needs an 'image'", service=name, key="image")
    spec = ServiceSpec(name=name, image=image.strip())
    if raw.get("command") is not None:
        spec.command = _str_list(raw["command"], service=name, key="command")
    if raw.get("entrypoint") is not None:
        spec.entrypoint = _str_list(raw["entrypoint"], service=name, key="entrypoint")
    if raw.get("environment") is not None:
        spec.environment = _mapping(raw["environment"], service=name, key="environment")
    if raw.get("labels") is not None:
        spec.labels = _mapping(raw["labels"], service=name, key="labels")
        for label in spec.labels:
            if label.startswith("moorage."):
                raise ComposeError(
                    "labels starting with 'moorage.' are reserved",
                    service=name,
                    key=f"labels.{label}",
                )
    if raw.get("ports") is not None:
        if not isinstance(raw["ports"], list):
            raise ComposeError("must be a list", service=name, key="ports")
        spec.ports = [_parse_port(p, service=name) for p in raw["ports"]]
    if raw.get("expose") is not None and not isinstance(raw["expose"], list):
        raise ComposeError("must be a list", service=name, key="expose")
    if raw.get("healthcheck") is not None:
        spec.healthcheck = _parse_healthcheck(raw["healthcheck"], service=name)
    if raw.get("depends_on") is not None:
        spec.depends_on = _parse_depends_on(raw["depends_on"], service=name)
    if raw.get("deploy") is not None:
        deploy = raw["deploy"]
        if not isinstance(deploy, dict):
            raise ComposeError("must be a mapping", service=name, key="deploy")
        for k in deploy:
            if k not in DEPLOY_KEYS:
                raise ComposeError("is not supported by Moorage", service=name, key=f"deploy.{k}")
        if "replicas" in deploy:
            replicas = deploy["replicas"]
            if (
                isinstance(replicas, bool)
                or not isinstance(replicas, int)
                or not 0 < replicas <= MAX_REPLICAS
            ):
                raise ComposeError(
                    f"must be an integer from 1 to {MAX_REPLICAS}",
                    service=name,
                    key="deploy.replicas",
                )
            spec.replicas = replicas
    if raw.get("stop_grace_period") is not None:
        spec.stop_grace_period_s = parse_duration(
            raw["stop_grace_period"], service=name, key="stop_grace_period"
        )
    if raw.get("x-moorage") is not None:
        _parse_x_moorage(raw["x-moorage"], spec)
    for key in ("stop_signal", "working_dir", "user"):
        if raw.get(key) is not None:
            if not isinstance(raw[key], str | int):
                raise ComposeError("must be a string", service=name, key=key)
            setattr(spec, key, str(raw[key]))
    _parse_privileges(raw, spec, policy)
    _parse_mounts(raw, spec, policy, volumes)
    _parse_resources(raw, spec)
    return spec


X_MOORAGE_KEYS = frozenset({"probe", "min_ready_seconds"})
PROBE_KEYS = frozenset({"type", "port", "path", "status", "interval", "timeout"})


def _parse_x_moorage(value: Any, spec: ServiceSpec) -> None:
    """``x-moorage``: Moorage's per-service extension (readiness probe, min ready time)."""
    name = spec.name
    if not isinstance(value, dict):
        raise ComposeError("must be a mapping", service=name, key="x-moorage")
    for k in value:
        if k not in X_MOORAGE_KEYS:
            raise ComposeError("is not supported", service=name, key=f"x-moorage.{k}")
    if "min_ready_seconds" in value:
        spec.min_ready_seconds = parse_duration(
            value["min_ready_seconds"], service=name, key="x-moorage.min_ready_seconds"
        )
    probe = value.get("probe")
    if probe is None:
        return
    if not isinstance(probe, dict):
        raise ComposeError("must be a mapping", service=name, key="x-moorage.probe")
    for k in probe:
        if k not in PROBE_KEYS:
            raise ComposeError("is not supported", service=name, key=f"x-moorage.probe.{k}")
    kind = probe.get("type", "http")
    if kind not in ("http", "tcp"):
        raise ComposeError("must be 'http' or 'tcp'", service=name, key="x-moorage.probe.type")
    port = probe.get("port")
    if port is None and spec.ports:
        port = spec.ports[0].target
    if (
        isinstance(port, bool)
        or not isinstance(port, int)
        or port not in {p.target for p in spec.ports}
    ):
        raise ComposeError(
            "must name a container port listed in 'ports'", service=name, key="x-moorage.probe.port"
        )
    status = probe.get("status", 200)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ComposeError("must be an HTTP status", service=name, key="x-moorage.probe.status")
    path = probe.get("path", "/")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ComposeError("must start with '/'", service=name, key="x-moorage.probe.path")
    spec.probe = ProbeSpec(
        type=kind,
        port=port,
        path=path,
        status=status,
        interval_s=parse_duration(
            probe.get("interval", 1), service=name, key="x-moorage.probe.interval"
        ),
        timeout_s=parse_duration(
            probe.get("timeout", 2), service=name, key="x-moorage.probe.timeout"
        ),
    )


def _start_order(services: dict[str, ServiceSpec]) -> list[ServiceSpec]:
    """Topological order by depends_on; ties keep the file's order."""
    for spec in services.values():
        for dep in spec.depends_on:
            if dep not in services:
                raise ComposeError(
                    f"depends on unknown service {dep!r}", service=spec.name, key="depends_on"
                )
    ordered: list[ServiceSpec] = []
    done: set[str] = set()
    # Depth-first with an explicit stack: a long depends_on chain must not hit Python's
    # recursion limit (a 256 KiB file can hold thousands of services).
    for root in services:
        if root in done:
            continue
        path = [root]
        on_path = {root}
        next_dep = [0]
        while path:
            name = path[-1]
            deps = services[name].depends_on
            if next_dep[-1] == len(deps):
                path.pop()
                next_dep.pop()
                on_path.discard(name)
                done.add(name)
                ordered.append(services[name])
                continue
            dep = deps[next_dep[-1]]
            next_dep[-1] += 1
            if dep in done:
                continue
            if dep in on_path:
                cycle = " -> ".join([*path[path.index(dep) :], dep])
                raise ComposeError(
                    f"depends_on has a cycle: {cycle}", service=dep, key="depends_on"
                )
            path.append(dep)
            on_path.add(dep)
            next_dep.append(0)
    return ordered


# --- interpolation ------------------------------------------------------------------------------

_VARIABLE_RE = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<named>[_a-zA-Z][_a-zA-Z0-9]*)|\{(?P<braced>[^}]*)\}|(?P<invalid>))"
)
_BRACED_RE = re.compile(
    r"(?P<name>[_a-zA-Z][_a-zA-Z0-9]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?", re.DOTALL
)
_TRUE_WORDS = frozenset({"y", "yes", "true", "on"})
_FALSE_WORDS = frozenset({"n", "no", "false", "off"})


def _to_bool(text: str) -> Any:
    word = text.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    return text


def _to_int(text: str) -> Any:
    return int(text) if re.fullmatch(r"\s*[+-]?\d+\s*", text) else text


def _to_float(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


# A value that interpolation produced is a string even where the key wants a boolean or a number;
# like Compose, convert it at the keys that are typed. A string written in the file stays a string
# (and is refused where a boolean or number is expected).
_TYPED_KEYS: tuple[tuple[tuple[str, ...], Callable[[str], Any]], ...] = (
    (("services", "*", "privileged"), _to_bool),
    (("services", "*", "cpus"), _to_float),
    (("services", "*", "pids_limit"), _to_int),
    (("services", "*", "deploy", "replicas"), _to_int),
    (("services", "*", "deploy", "resources", "limits", "cpus"), _to_float),
    (("services", "*", "deploy", "resources", "limits", "pids"), _to_int),
    (("services", "*", "healthcheck", "retries"), _to_int),
    (("services", "*", "healthcheck", "disable"), _to_bool),
    (("services", "*", "volumes", "[]", "read_only"), _to_bool),
    (("services", "*", "volumes", "[]", "volume", "nocopy"), _to_bool),
    (("services", "*", "x-moorage", "probe", "port"), _to_int),
    (("services", "*", "x-moorage", "probe", "status"), _to_int),
    (("volumes", "*", "external"), _to_bool),
    (("networks", "*", "external"), _to_bool),
)

_KeyPath = tuple[str | int, ...]


def _location(path: _KeyPath) -> tuple[str | None, str | None]:
    """(service, dotted key) of a value's path; list positions are left out, as elsewhere."""
    service: str | None = None
    rest = path
    if len(path) >= 2 and path[0] == "services":
        service, rest = str(path[1]), path[2:]
    key = ".".join(p for p in rest if isinstance(p, str))
    return service, key or None


class _Interpolator:
    """Substitutes ``${VAR}`` in every string value of a loaded Compose file.

    Forms (Compose specification): ``$VAR``, ``${VAR}``, ``${VAR:-default}`` (unset or empty),
    ``${VAR-default}`` (unset), ``${VAR:?message}`` / ``${VAR?message}`` (an error),
    ``${VAR:+other}`` / ``${VAR+other}`` (``other`` when set), ``$$`` (a literal ``$``). Unlike
    Compose, a variable that is not set and has no default is an error, and a default or message
    may not itself hold ``$`` (no nested interpolation). The result is never interpolated again.
    """

    def __init__(self, variables: Mapping[str, str]) -> None:
        self._variables = variables
        self._has_dollar: dict[int, bool] = {}
        self._size = 0
        self._values = 0

    def _contains_dollar(self, node: Any, active: set[int]) -> bool:
        """Whether a string below ``node`` holds ``$``; memoised, so aliases cost nothing."""
        if isinstance(node, str):
            return "$" in node
        if not isinstance(node, dict | list):
            return False
        ident = id(node)
        if ident in self._has_dollar:
            return self._has_dollar[ident]
        if ident in active:
            raise ComposeError("a YAML alias refers to itself")
        active.add(ident)
        children = node.values() if isinstance(node, dict) else node
        found = any(self._contains_dollar(child, active) for child in children)
        active.discard(ident)
        self._has_dollar[ident] = found
        return found

    def walk(self, node: Any, path: _KeyPath, active: set[int]) -> Any:
        """``node`` with every string below it interpolated (subtrees without ``$`` are kept)."""
        if isinstance(node, str):
            return self._string(node, path) if "$" in node else node
        if not isinstance(node, dict | list) or not self._contains_dollar(node, set()):
            return node
        self._count(path)
        ident = id(node)
        if ident in active:
            raise ComposeError("a YAML alias refers to itself")
        active.add(ident)
        result: Any
        if isinstance(node, dict):
            result = {k: self.walk(v, (*path, str(k)), active) for k, v in node.items()}
        else:
            result = [self.walk(v, (*path, i), active) for i, v in enumerate(node)]
        active.discard(ident)
        return result

    def _count(self, path: _KeyPath) -> None:
        self._values += 1
        if self._values > MAX_INTERPOLATED_VALUES:
            service, key = _location(path)
            raise ComposeError(
                f"interpolation would visit more than {MAX_INTERPOLATED_VALUES} values "
                "(YAML aliases repeat them)",
                service=service,
                key=key,
            )

    def _string(self, value: str, path: _KeyPath) -> Any:
        self._count(path)
        substituted = False

        def replace(match: re.Match[str]) -> str:
            nonlocal substituted
            if match["escaped"] is not None:
                return "$"
            substituted = True
            if match["named"] is not None:
                return self._lookup(match["named"], None, "", path)
            braced = _BRACED_RE.fullmatch(match["braced"] or "")
            if match["braced"] is None or braced is None:
                service, key = _location(path)
                raise ComposeError(
                    f"invalid interpolation in {value!r}: write ${{NAME}}, ${{NAME:-default}}, "
                    "or $$ for a literal $",
                    service=service,
                    key=key,
                )
            arg = braced["arg"] or ""
            if "$" in arg:
                service, key = _location(path)
                raise ComposeError(
                    f"in {value!r}: a default or message may not hold '$' "
                    "(nested interpolation is not supported)",
                    service=service,
                    key=key,
                )
            return self._lookup(braced["name"], braced["op"], arg, path)

        result = _VARIABLE_RE.sub(replace, value)
        self._size += len(result.encode())
        if self._size > MAX_INTERPOLATED_BYTES:
            service, key = _location(path)
            raise ComposeError(
                f"interpolation produces more than {MAX_INTERPOLATED_BYTES} bytes",
                service=service,
                key=key,
            )
        if substituted:
            shape = tuple("[]" if isinstance(p, int) else p for p in path)
            for pattern, cast in _TYPED_KEYS:
                if len(pattern) == len(shape) and all(
                    want in ("*", got) for want, got in zip(pattern, shape, strict=True)
                ):
                    return cast(result)
        return result

    def _lookup(self, name: str, op: str | None, arg: str, path: _KeyPath) -> str:
        value = self._variables.get(name)
        if op == ":-":
            return value or arg
        if op == "-":
            return arg if value is None else value
        if op == ":+":
            return arg if value else ""
        if op == "+":
            return "" if value is None else arg
        if value is not None and (value or op != ":?"):
            return value
        service, key = _location(path)
        if op in (":?", "?"):
            detail = f": {arg}" if arg else ""
            message = f"variable {name!r} is required{detail}"
        else:
            message = (
                f"variable {name!r} is not set (pass it in the variables, or give it a default: "
                f"${{{name}:-default}})"
            )
        raise ComposeError(message, service=service, key=key)


UNRESTRICTED = ComposePolicy(unrestricted=True)
"""The policy of text that was already checked against its tenant's policy."""


def _load(text: str) -> dict[str, Any]:
    if len(text.encode()) > MAX_COMPOSE_BYTES:
        raise ComposeError(f"the Compose file is larger than {MAX_COMPOSE_BYTES} bytes")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ComposeError(f"not valid YAML: {exc}") from exc
    except RecursionError as exc:  # PyYAML composes nested nodes recursively
        raise ComposeError("the YAML is nested too deeply") from exc
    if not isinstance(raw, dict):
        raise ComposeError("a Compose file must be a mapping with a 'services' key")
    return raw


def _interpolate(raw: dict[str, Any], variables: Mapping[str, str] | None) -> dict[str, Any]:
    try:
        result: dict[str, Any] = _Interpolator(variables or {}).walk(raw, (), set())
    except RecursionError as exc:  # chained YAML aliases nest deeper than the text does
        raise ComposeError("the YAML is nested too deeply") from exc
    return result


def _escape_dollars(node: Any) -> Any:
    if isinstance(node, str):
        return node.replace("$", "$$")
    if isinstance(node, dict):
        return {k: _escape_dollars(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_escape_dollars(v) for v in node]
    return node


def resolve_compose(text: str, variables: Mapping[str, str] | None = None) -> str:
    """The Compose text with ``${VAR}`` substituted: what the project stores and deploys.

    Text without ``$`` comes back unchanged (comments and layout kept). Otherwise the result is
    the interpolated document as YAML, with every literal ``$`` written ``$$``, so parsing it
    again (without variables) gives the same project.

    Raises:
        ComposeError: not valid YAML, or a variable that is not set (or invalid interpolation).
    """
    raw = _load(text)
    if "$" not in text:
        return text
    resolved = _escape_dollars(_interpolate(raw, variables))
    return str(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))


def parse_compose(
    text: str,
    *,
    variables: Mapping[str, str] | None = None,
    policy: ComposePolicy | None = None,
) -> ProjectSpec:
    """Parse Compose YAML into a :class:`ProjectSpec`.

    Args:
        text: the Compose file.
        variables: the values of ``${VAR}`` (never read from the server's environment).
        policy: what the tenant may use beyond the safe default (None: the default policy).

    Raises:
        ComposeError: the text is not valid YAML, not a Compose file, names a variable that is not
            set, or uses what Moorage (or the policy) refuses.
    """
    raw = _interpolate(_load(text), variables)
    for key in raw:
        if key == "networks":
            _refuse_networks(raw[key])
        if key not in TOP_LEVEL_KEYS and not str(key).startswith("x-"):
            raise ComposeError(f"top-level key {key!r} is not supported by Moorage", key=str(key))
    volume_specs = _parse_volumes(raw.get("volumes"))
    volumes = frozenset(v.name for v in volume_specs)
    services_raw = raw.get("services")
    if not isinstance(services_raw, dict) or not services_raw:
        raise ComposeError("'services' must be a non-empty mapping", key="services")
    if len(services_raw) > MAX_SERVICES:
        raise ComposeError(
            f"a project may hold at most {MAX_SERVICES} services, this one has {len(services_raw)}",
            key="services",
        )
    policy = policy or ComposePolicy()
    services = {
        str(name): _parse_service(str(name), body, policy=policy, volumes=volumes)
        for name, body in services_raw.items()
    }
    declared = {v.name: v for v in volume_specs}
    for spec in services.values():
        for mount in spec.mounts:
            if mount.type == "volume" and mount.source in declared:
                mount.driver_opts = dict(declared[mount.source].driver_opts)
    return ProjectSpec(
        services=_start_order(services),
        volumes=[v.name for v in volume_specs],
        volume_specs=volume_specs,
    )
