"""Compose file → project spec.

Allow-list parsing: every key Moorage understands is turned into a typed field; every other key is
refused with an error that names the service and the key, never silently dropped.
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml
from pydantic import BaseModel, Field

MAX_COMPOSE_BYTES = 256 * 1024
"""Largest Compose text accepted."""

_SERVICE_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

TOP_LEVEL_KEYS = frozenset({"services", "version", "name"})
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
    }
)
DEPLOY_KEYS = frozenset({"replicas"})
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

    def route_port(self) -> PortSpec | None:
        """The container port the traffic router sends requests to: the first TCP port."""
        return next((p for p in self.ports if p.protocol == "tcp"), None)


class ProjectSpec(BaseModel):
    """A parsed project: its services in start order (every service after its dependencies)."""

    services: list[ServiceSpec]

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


def _str_list(value: Any, *, service: str, key: str) -> list[str] | str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return [str(v) for v in value]
    raise ComposeError("must be a string or a list of strings", service=service, key=key)


def _mapping(value: Any, *, service: str, key: str) -> dict[str, str]:
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


def _parse_service(name: str, raw: Any) -> ServiceSpec:
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


def parse_compose(text: str) -> ProjectSpec:
    """Parse Compose YAML into a :class:`ProjectSpec`.

    Raises:
        ComposeError: the text is not valid YAML, not a Compose file, or uses what Moorage refuses.
    """
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
    for key in raw:
        if key not in TOP_LEVEL_KEYS and not str(key).startswith("x-"):
            raise ComposeError(f"top-level key {key!r} is not supported by Moorage", key=str(key))
    services_raw = raw.get("services")
    if not isinstance(services_raw, dict) or not services_raw:
        raise ComposeError("'services' must be a non-empty mapping", key="services")
    services = {str(name): _parse_service(str(name), body) for name, body in services_raw.items()}
    return ProjectSpec(services=_start_order(services))
