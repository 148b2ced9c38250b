"""One service of a Compose file → :class:`~moorage.compose.models.ServiceSpec`.

Allow-list parsing: every key Moorage understands is turned into a typed field; every other key is
refused with an error that names the service and the key.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from moorage.compose.errors import (
    MAX_DURATION_S,
    MAX_HEALTH_CHECK_DELAY_S,
    MAX_HEALTHCHECK_DURATION_S,
    MAX_HEALTHCHECK_RETRIES,
    MAX_MIN_READY_S,
    MAX_PROBE_INTERVAL_S,
    MAX_PROBE_TIMEOUT_S,
    MAX_REPLICAS,
    MAX_STOP_GRACE_PERIOD_S,
    MIN_HEALTHCHECK_DURATION_S,
    MIN_PROBE_INTERVAL_S,
    MIN_PROBE_TIMEOUT_S,
    ComposeError,
    route_address,
    strict,
)
from moorage.compose.models import (
    PREVIEW_PREFIX,
    HealthcheckSpec,
    PortSpec,
    ProbeSpec,
    ServiceSpec,
)
from moorage.compose.mounts import _parse_mounts, _parse_privileges
from moorage.compose.policy import ComposePolicy
from moorage.compose.values import (
    _known_keys,
    _mapping,
    _parse_resources,
    _shown,
    _str_list,
    boolean,
    parse_duration,
    yaml_bool,
)

MAX_HOSTNAME = 64
"""Linux's longest hostname (``__NEW_UTS_LEN``: sethostname fails with EINVAL past it)."""
MAX_SERVICE_NAME = MAX_HOSTNAME
"""Longest service name; with its replicas' slots (``<service>-<slot>``, the hostname) the name
must leave room for ``-<replicas - 1>``."""
_SERVICE_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")

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
        "restart",
    }
)
DEPLOY_KEYS = frozenset({"replicas", "resources", "restart_policy"})
RESTART_POLICY_KEYS = frozenset({"condition", "max_attempts", "delay", "window"})
HEALTHCHECK_KEYS = frozenset({"test", "interval", "timeout", "retries", "start_period", "disable"})

X_MOORAGE_KEYS = frozenset(
    {"probe", "min_ready_seconds", "health_check_delay", "health_check_retries", "route"}
)
PROBE_KEYS = frozenset({"type", "port", "path", "status", "interval", "timeout"})


# fmt: off
_SIGNALS = frozenset({
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL",
    "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP",
    "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ", "RTMIN", "RTMAX",
    *(f"RTMIN+{n}" for n in range(1, 16)),
    *(f"RTMAX-{n}" for n in range(1, 15)),
})
# fmt: on
"""The Linux signal names Docker knows (moby/sys ``signal.SignalMap``), without ``SIG``."""


def _is_signal(text: str) -> bool:
    """Whether Docker takes ``text`` as a stop signal: a name (any case, ``SIG`` or not) or 1-64."""
    if text.isascii() and text.isdigit():
        number = text.lstrip("0")
        return 0 < len(number) <= 2 and int(number) <= 64
    return text.isascii() and text.upper().removeprefix("SIG") in _SIGNALS


_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_REF_RE = re.compile(
    rf"(?:(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?/)?"
    rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::\w[\w.-]{0,127})?"
    r"(?:@sha256:[a-f0-9]{64})?",
    re.ASCII,
)
"""Docker's image reference grammar (distribution ``reference``): ``[host[:port]/]path[:tag]``
and an optional ``@sha256:`` digest; the path's components lowercase."""
MAX_IMAGE_NAME = 255
"""Docker's longest repository name (host and path)."""


def _check_image(image: str, *, service: str) -> None:
    """Refuse an image reference Docker would refuse when the deployment pulls it.

    Raises:
        ComposeError: naming ``image``.
    """
    name = image.partition("@")[0]
    if ":" in name.rpartition("/")[2]:
        name = name.rpartition(":")[0]
    # A valid reference is under 500 characters; a long text never reaches the regex.
    if len(image) > 2 * MAX_IMAGE_NAME or not _IMAGE_REF_RE.fullmatch(image):
        raise ComposeError(
            f"{_shown(image)} is not an image reference like nginx:1.27 or "
            "registry.example.com:5000/team/app:v2 (lowercase path, optional :tag and "
            "@sha256:digest)",
            service=service,
            key="image",
        )
    if len(name) > MAX_IMAGE_NAME:
        raise ComposeError(
            f"the repository name is longer than {MAX_IMAGE_NAME} characters",
            service=service,
            key="image",
        )


_PROBE_PATH_RE = re.compile(r"/[\x21-\x7e]*")
"""A path (and query) the probe can send: ``/`` and printable ASCII. ``http.client`` refuses the
rest (``UnicodeEncodeError``, or ``InvalidURL`` for a space or control character); what servers
make of ``[]``, ``{}`` or ``|`` is theirs (many take them, and the parser took them before)."""
MAX_PROBE_PATH = 2048
"""Longest probe path (many servers answer a longer request line with 414)."""


def _port_number(value: Any) -> int | None:
    """A port number (an integer, or a string of digits) from 1 to 65535; None otherwise.

    A float (``80.5``, ``.inf``) is no port number: int() would truncate it or overflow.
    """
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value) if len(value.strip()) <= 5 else None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        return None
    return value


def _parse_port(item: Any, *, service: str) -> tuple[PortSpec, str | None]:
    """One ``ports`` entry, and the host address it names (None: none, every address)."""
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
        # A stored revision's mode and host IP were ignored unchecked (Moorage publishes on
        # 127.0.0.1), and they deployed.
        if item.get("mode", "ingress") not in ("ingress", "host") and strict():
            raise ComposeError(
                f"{_shown(item['mode'])} is not a port mode: ingress or host",
                service=service,
                key="ports.mode",
            )
        # Empty: every address, as Docker reads it (``host_ip: ${BIND:-}``).
        if item.get("host_ip", "") != "" and not _is_ip(item["host_ip"]) and strict():
            raise ComposeError(
                f"{_shown(item['host_ip'])} is not an IP address",
                service=service,
                key="ports.host_ip",
            )
        target = _port_number(item.get("target"))
        published = item.get("published")
        if target is None or (published is not None and _port_number(published) is None):
            raise ComposeError(
                f"invalid long-syntax port {_shown(item)}: target and published are port "
                "numbers from 1 to 65535",
                service=service,
                key=key,
            )
        port = PortSpec(
            target=target,
            protocol=str(item.get("protocol", "tcp")),
            published=_port_number(published),
        )
        return port, str(item["host_ip"]) if item.get("host_ip") not in (None, "") else None
    if isinstance(item, bool) or not isinstance(item, int | str):
        raise ComposeError(f"invalid port {_shown(item)}", service=service, key=key)
    text = str(item).strip()
    protocol = "tcp"
    if "/" in text:
        text, protocol = text.rsplit("/", 1)
    if protocol not in ("tcp", "udp"):
        raise ComposeError(f"invalid protocol {_shown(protocol)}", service=service, key=key)
    host_ip = None
    if text.startswith("["):  # [IPv6]:published:target
        host_ip, bracket, text = text[1:].partition("]:")
        if not bracket:
            raise ComposeError(f"invalid port {_shown(item)}", service=service, key=key)
        text = ":" + text
    parts = text.split(":")
    if len(parts) == 3 and host_ip is None:
        host_ip = parts[0]
    if len(parts) > 3 or any("-" in p for p in parts):
        raise ComposeError(
            f"invalid port {_shown(item)}: write [IP:][PUBLISHED:]TARGET (port ranges are not "
            "supported)",
            service=service,
            key=key,
        )
    # Empty: every address, as Docker reads it; a stored revision's was ignored unchecked.
    if host_ip and not _is_ip(host_ip) and strict():
        raise ComposeError(
            f"invalid port {_shown(item)}: {_shown(host_ip)} is not an IP address "
            "(write IP:PUBLISHED:TARGET)",
            service=service,
            key=key,
        )
    target = _port_number(parts[-1])
    published = _port_number(parts[-2]) if len(parts) >= 2 and parts[-2] else None
    if target is None or (len(parts) >= 2 and parts[-2] and published is None):
        raise ComposeError(
            f"invalid port {_shown(item)}: ports are numbers from 1 to 65535",
            service=service,
            key=key,
        )
    return PortSpec(target=target, protocol=protocol, published=published), host_ip or None


def _refuse_unserved_published(spec: ServiceSpec) -> None:
    """Refuse a ``published`` host port that nothing would listen on.

    Moorage binds no host port of a replica directly (two revisions' replicas run side by side):
    the router listens on the published port of the service's route, its first TCP port. Any
    other published port (a second TCP port, a UDP port, any port of a service off the router)
    was parsed and dropped: ``"8443:443"`` deployed with nothing on 8443.
    """
    route = spec.route_port()
    for port in spec.ports:
        if port.published is None or port is route or port == route:
            continue  # the route's port again (another address): the address check decides
        if not spec.route:
            why = "x-moorage.route is false, so no host port of this service is served"
        elif route is None or port.protocol != "tcp":
            why = "the router serves TCP only"
        else:
            why = (
                f"the router serves one port per service, its first TCP one ({route.target}; "
                "list the one to route first)"
            )
        shown = f"{port.target}/udp" if port.protocol == "udp" else str(port.target)
        raise ComposeError(
            f"published port {port.published} (container port {shown}) would not be served: "
            f'{why}; leave the host port out ("{shown}": other services of the project '
            "still reach it by the service's name)",
            service=spec.name,
            key="ports",
        )


_EVERY_ADDRESS = frozenset({"0.0.0.0", "::"})


def _refuse_other_route_address(spec: ServiceSpec, host_ips: list[str | None]) -> None:
    """Refuse a route's published port bound to an address the router does not listen on.

    The route listens on ``MOORAGE_ROUTER_BIND`` whatever the file says: ``"127.0.0.1:8080:80"``
    under a router bound to 0.0.0.0 was open on every address of the host.
    """
    address = route_address()
    route = spec.route_port()
    if address is None or route is None:
        return
    # The route's port may be listed again (for another address): every entry is checked.
    asked = {ip for port, ip in zip(spec.ports, host_ips, strict=True) if port == route}
    wanted = next(
        (ip for ip in sorted(asked, key=str) if ip not in (None, address, *_EVERY_ADDRESS)), None
    )
    if wanted is None:
        return
    where = "leave the address out" + (
        f", or run the router on it (MOORAGE_ROUTER_BIND={wanted})" if ":" not in wanted else ""
    )
    raise ComposeError(
        f"port {route.target} is bound to {wanted}, but routes listen on {address} "
        f"(MOORAGE_ROUTER_BIND), whatever the file says; {where}",
        service=spec.name,
        key="ports",
    )


_EXPOSE_RE = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?(?:/(?:tcp|udp|sctp))?")


def _check_expose(value: Any, *, service: str) -> None:
    """``expose``: container ports (``3000``, ``"8000-8010"``, ``"53/udp"``), as Compose takes them.

    Moorage needs no ``expose`` (replicas reach each other on the project's network), but an
    entry Compose would refuse is refused rather than dropped.

    Raises:
        ComposeError: not a list, or an entry that is no port or port range.
    """
    if not isinstance(value, list):
        raise ComposeError("must be a list", service=service, key="expose")
    for item in value:
        match = _EXPOSE_RE.fullmatch(item) if isinstance(item, str) else None
        ports = [g for g in match.groups() if g] if match else [item]
        if not all(_port_number(p) for p in ports) or (match and int(ports[0]) > int(ports[-1])):
            raise ComposeError(
                f"{_shown(item)} is not a container port or range like 3000, '8000-8010' or "
                "'53/udp'",
                service=service,
                key="expose",
            )


def _is_ip(value: Any) -> bool:
    """Whether ``value`` is an IPv4 or IPv6 address written as a string (a port's host IP)."""
    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _parse_healthcheck(value: Any, *, service: str) -> HealthcheckSpec:
    _known_keys(value, HEALTHCHECK_KEYS, service=service, key="healthcheck")
    disable = boolean(value.get("disable", False), service=service, key="healthcheck.disable")
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
            seconds = parse_duration(
                value[name],
                service=service,
                key=f"healthcheck.{name}",
                maximum=MAX_HEALTHCHECK_DURATION_S,
                minimum=MIN_HEALTHCHECK_DURATION_S,  # Docker's floor; 0 is its default
            )
            setattr(spec, f"{name}_s", seconds)
    if "retries" in value:
        retries = value["retries"]
        if (
            isinstance(retries, bool)
            or not isinstance(retries, int)
            or retries < 0
            or (retries > MAX_HEALTHCHECK_RETRIES and strict())
        ):
            raise ComposeError(
                f"must be a whole number from 0 to {MAX_HEALTHCHECK_RETRIES}",
                service=service,
                key="healthcheck.retries",
            )
        spec.retries = retries
    return spec


DEPENDS_ON_CONDITIONS = ("service_started", "service_healthy")


def _check_dependency(dep: Any, options: dict[Any, Any], *, service: str) -> None:
    """One ``depends_on`` entry's options: a condition Moorage meets, and booleans.

    Moorage starts a service once those it depends on are ready (healthy, or running without a
    healthcheck), so ``service_started`` and ``service_healthy`` both hold;
    ``service_completed_successfully`` cannot (a replica that exits fails its deployment).

    Raises:
        ComposeError: naming ``depends_on.<dep>.<option>``.
    """
    condition = options.get("condition", "service_started")
    if condition == "service_completed_successfully":
        raise ComposeError(
            "service_completed_successfully is not supported: Moorage runs services, and a "
            "replica that exits fails the deployment (use service_started or service_healthy)",
            service=service,
            key=f"depends_on.{dep}.condition",
        )
    if condition not in DEPENDS_ON_CONDITIONS:
        raise ComposeError(
            f"{_shown(condition)} is not a condition: service_started or service_healthy",
            service=service,
            key=f"depends_on.{dep}.condition",
        )
    for k in ("restart", "required"):
        if k in options:
            boolean(options[k], service=service, key=f"depends_on.{dep}.{k}")


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
            if strict():  # a stored revision's options were not checked, and it deployed
                _check_dependency(dep, cond or {}, service=service)
        return [str(d) for d in value]
    raise ComposeError(
        "must be a list or a mapping of service names", service=service, key="depends_on"
    )


def _parse_service(
    name: str, raw: Any, *, policy: ComposePolicy, volumes: frozenset[str]
) -> ServiceSpec:
    if not _SERVICE_NAME_RE.fullmatch(name) or len(name) > MAX_SERVICE_NAME:
        raise ComposeError(
            f"service names may hold letters, digits, '_', '.', '-' (at most {MAX_SERVICE_NAME})",
            service=name,
        )
    if name.lower().startswith(PREVIEW_PREFIX) and strict():
        # A blue-green names its preview routes so: such a service shared its route with the
        # preview of the other (green replicas in its traffic), and lost it when that one went.
        raise ComposeError(
            f"service names starting with {PREVIEW_PREFIX!r} are Moorage's (blue-green preview "
            "routes)",
            service=name,
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
    if strict():  # a stored revision's image was pulled and ran
        _check_image(image.strip(), service=name)
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
    host_ips: list[str | None] = []
    if raw.get("ports") is not None:
        if not isinstance(raw["ports"], list):
            raise ComposeError("must be a list", service=name, key="ports")
        parsed = [_parse_port(p, service=name) for p in raw["ports"]]
        spec.ports = [port for port, _ in parsed]
        host_ips = [address for _, address in parsed]
    if raw.get("expose") is not None and strict():  # a stored revision's were dropped unchecked
        _check_expose(raw["expose"], service=name)
    if raw.get("healthcheck") is not None:
        spec.healthcheck = _parse_healthcheck(raw["healthcheck"], service=name)
    if raw.get("depends_on") is not None:
        spec.depends_on = _parse_depends_on(raw["depends_on"], service=name)
    if raw.get("deploy") is not None:
        deploy = _known_keys(
            raw["deploy"],
            DEPLOY_KEYS,
            service=name,
            key="deploy",
            refusal="is not supported by Moorage",
        )
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
    if len(hostname := f"{name}-{spec.replicas - 1}") > MAX_HOSTNAME:
        # A longer one failed inside the deployment: a replica's hostname is the service's name
        # and its slot, and Linux takes at most 64 characters.
        raise ComposeError(
            f"the name is too long for its replicas: hostname {hostname!r} has {len(hostname)} "
            f"characters, Linux takes at most {MAX_HOSTNAME}",
            service=name,
        )
    if raw.get("stop_grace_period") is not None:
        spec.stop_grace_period_s = parse_duration(
            raw["stop_grace_period"],
            service=name,
            key="stop_grace_period",
            maximum=MAX_STOP_GRACE_PERIOD_S,
        )
    if "restart" in raw:
        spec.restart, spec.restart_max_retries = _parse_restart(raw["restart"], service=name)
    deploy_policy = raw["deploy"].get("restart_policy") if raw.get("deploy") is not None else None
    if deploy_policy is not None:
        restart = _parse_deploy_restart_policy(deploy_policy, service=name)
        if "restart" in raw and restart != (spec.restart, spec.restart_max_retries):
            raise ComposeError(
                f"asks for {_restart_text(restart)} and restart for "
                f"{_restart_text((spec.restart, spec.restart_max_retries))}: set one of them",
                service=name,
                key="deploy.restart_policy",
            )
        spec.restart, spec.restart_max_retries = restart
    if raw.get("x-moorage") is not None:
        _parse_x_moorage(raw["x-moorage"], spec)
    if strict():  # a stored revision's other published ports were dropped unchecked
        _refuse_unserved_published(spec)
        _refuse_other_route_address(spec, host_ips)
    for key in ("stop_signal", "working_dir", "user"):
        if raw.get(key) is not None:
            if isinstance(raw[key], bool) or not isinstance(raw[key], str | int):
                raise ComposeError("must be a string", service=name, key=key)
            setattr(spec, key, str(raw[key]))
    if spec.stop_signal is not None and not _is_signal(spec.stop_signal):
        raise ComposeError(
            f"{_shown(spec.stop_signal)} is not a signal: a name such as SIGTERM, TERM, "
            "SIGRTMIN+3, or a number from 1 to 64",
            service=name,
            key="stop_signal",
        )
    if spec.working_dir is not None and not spec.working_dir.startswith("/"):
        # Docker refuses it when the container is created, inside the deployment.
        raise ComposeError(
            f"{_shown(spec.working_dir)} must be an absolute container path",
            service=name,
            key="working_dir",
        )
    _parse_privileges(raw, spec, policy)
    _parse_mounts(raw, spec, policy, volumes)
    _parse_resources(raw, spec)
    return spec


RESTART_POLICIES = ("no", "always", "on-failure", "unless-stopped")
MAX_RESTART_RETRIES = 1000


def _parse_restart(value: Any, *, service: str) -> tuple[str, int]:
    """``restart``: the engine's restart policy, and ``on-failure``'s retry limit (0: none).

    An unquoted ``no`` is ``"no"``, as Docker Compose reads it; so are ``false`` and the other
    YAML 1.1 words for it (``off``, ``No``), which Moorage took as ``no`` before it read them as
    Compose does (a stored revision may hold them).
    """
    if yaml_bool(value) is False:
        return "no", 0
    usage = f"must be one of {', '.join(RESTART_POLICIES)} or on-failure:N (N at least 1)"
    if not isinstance(value, str):
        raise ComposeError(usage, service=service, key="restart")
    policy, colon, limit = value.strip().partition(":")
    if policy not in RESTART_POLICIES:
        raise ComposeError(f"{value!r}: {usage}", service=service, key="restart")
    if not colon:
        return policy, 0
    if (
        policy != "on-failure"
        or not limit.isascii()
        or not limit.isdigit()
        or len(limit) > len(str(MAX_RESTART_RETRIES))  # int() of 5,000 digits raises
        or not 1 <= int(limit) <= MAX_RESTART_RETRIES
    ):
        raise ComposeError(
            f"{_shown(value)}: only on-failure takes a retry limit, a whole number from 1 to "
            f"{MAX_RESTART_RETRIES}",
            service=service,
            key="restart",
        )
    return policy, int(limit)


RESTART_CONDITIONS = {
    "none": "no",
    "on-failure": "on-failure",
    "any": "always",
    # Docker Compose takes restart:'s words here too.
    "no": "no",
    "always": "always",
    "unless-stopped": "unless-stopped",
}


def _restart_text(policy: tuple[str, int]) -> str:
    name, limit = policy
    return f"{name}:{limit}" if limit else name


def _parse_deploy_restart_policy(value: Any, *, service: str) -> tuple[str, int]:
    """``deploy.restart_policy``, the Swarm-style spelling, as the engine's policy.

    ``condition`` ``none`` / ``on-failure`` / ``any`` (the Compose spec's default) is ``no`` /
    ``on-failure`` / ``always``, as Docker Compose maps it outside Swarm (which also takes
    ``restart:``'s words); ``max_attempts`` is on-failure's limit.
    ``delay`` and ``window`` have no counterpart in the engine (it restarts with its own back-off,
    from 100 ms doubling, and counts every restart), so anything but 0 is refused, not ignored.
    """
    key = "deploy.restart_policy"
    _known_keys(value, RESTART_POLICY_KEYS, service=service, key=key)
    condition = value.get("condition", "any")
    if condition is False:  # an unquoted no
        condition = "no"
    if not isinstance(condition, str) or condition not in RESTART_CONDITIONS:
        raise ComposeError(
            f"{condition!r}: must be one of none, on-failure, any (or no, always, "
            "unless-stopped, as in restart:)",
            service=service,
            key=f"{key}.condition",
        )
    for k, why in (
        ("delay", "the engine restarts with its own back-off (from 100 ms, doubling)"),
        ("window", "the engine counts every restart, however long the replica ran"),
    ):
        if value.get(k) is not None and parse_duration(
            value[k], service=service, key=f"{key}.{k}", maximum=MAX_DURATION_S
        ):
            raise ComposeError(
                f"is not supported: {why}; Moorage does not ignore it silently",
                service=service,
                key=f"{key}.{k}",
            )
    attempts = value.get("max_attempts")
    if attempts is None:
        return RESTART_CONDITIONS[condition], 0
    if (
        isinstance(attempts, bool)
        or not isinstance(attempts, int)
        or not 1 <= attempts <= MAX_RESTART_RETRIES
    ):
        raise ComposeError(
            f"must be a whole number from 1 to {MAX_RESTART_RETRIES}",
            service=service,
            key=f"{key}.max_attempts",
        )
    if condition != "on-failure":
        raise ComposeError(
            f"is only taken with condition on-failure (the engine limits no other), "
            f"not {condition}",
            service=service,
            key=f"{key}.max_attempts",
        )
    return "on-failure", attempts


def _parse_x_moorage(value: Any, spec: ServiceSpec) -> None:
    """``x-moorage``: Moorage's per-service extension.

    A readiness probe, a min ready time, the deployment's health delay and retries for this
    service, and whether the traffic router routes it.
    """
    name = spec.name
    _known_keys(value, X_MOORAGE_KEYS, service=name, key="x-moorage")
    if "min_ready_seconds" in value:
        spec.min_ready_seconds = parse_duration(
            value["min_ready_seconds"],
            service=name,
            key="x-moorage.min_ready_seconds",
            maximum=MAX_MIN_READY_S,
        )
    if "health_check_delay" in value:
        spec.health_check_delay = parse_duration(
            value["health_check_delay"],
            service=name,
            key="x-moorage.health_check_delay",
            maximum=MAX_HEALTH_CHECK_DELAY_S,
        )
    if "health_check_retries" in value:
        retries = value["health_check_retries"]
        if isinstance(retries, bool) or not isinstance(retries, int) or not 1 <= retries <= 10_000:
            raise ComposeError(
                "must be a whole number from 1 to 10000",
                service=name,
                key="x-moorage.health_check_retries",
            )
        spec.health_check_retries = retries
    if "route" in value:
        mode = value["route"]
        if mode in ("http", "tcp"):
            spec.route, spec.route_mode = True, mode
        else:
            try:
                spec.route = boolean(mode, service=name, key="x-moorage.route")
            except ComposeError:
                raise ComposeError(
                    "must be true, false, 'http' or 'tcp'", service=name, key="x-moorage.route"
                ) from None
    probe = value.get("probe")
    if probe is None:
        return
    _known_keys(probe, PROBE_KEYS, service=name, key="x-moorage.probe")
    kind = probe.get("type", "http")
    if kind not in ("http", "tcp"):
        raise ComposeError("must be 'http' or 'tcp'", service=name, key="x-moorage.probe.type")
    # The probe connects over TCP: a UDP port (the first listed one was the default) failed
    # every check, then the deployment, after the whole health window.
    tcp = [p.target for p in spec.ports if p.protocol == "tcp"]
    port = probe.get("port")
    if port is None and spec.ports:
        port = tcp[0] if tcp else spec.ports[0].target
    if (
        isinstance(port, bool)
        or not isinstance(port, int)
        or port not in (tcp if strict() else {p.target for p in spec.ports})
    ):
        raise ComposeError(
            "must name a TCP container port listed in 'ports'",
            service=name,
            key="x-moorage.probe.port",
        )
    status = probe.get("status", 200)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ComposeError("must be an HTTP status", service=name, key="x-moorage.probe.status")
    path = probe.get("path", "/")
    if not isinstance(path, str) or not _PROBE_PATH_RE.fullmatch(path):
        # http.client raised UnicodeEncodeError (or InvalidURL) on it in every probe.
        raise ComposeError(
            f"{_shown(path)} is not an HTTP request path: it starts with '/' and holds only "
            "printable ASCII (no space; escape others as %XX)",
            service=name,
            key="x-moorage.probe.path",
        )
    if len(path) > MAX_PROBE_PATH:
        raise ComposeError(
            f"is longer than {MAX_PROBE_PATH} characters", service=name, key="x-moorage.probe.path"
        )
    spec.probe = ProbeSpec(
        type=kind,
        port=port,
        path=path,
        status=status,
        interval_s=parse_duration(
            probe.get("interval", 1),
            service=name,
            key="x-moorage.probe.interval",
            maximum=MAX_PROBE_INTERVAL_S,
            minimum=MIN_PROBE_INTERVAL_S,
            zero=False,  # a loop that polls without a pause
        ),
        timeout_s=parse_duration(
            probe.get("timeout", 2),
            service=name,
            key="x-moorage.probe.timeout",
            maximum=MAX_PROBE_TIMEOUT_S,
            minimum=MIN_PROBE_TIMEOUT_S,
            zero=False,  # a non-blocking socket: every probe fails
        ),
    )
