"""Compose text → :class:`~moorage.compose.models.ProjectSpec`: the top level of the file.

Loads the YAML, interpolates it, checks the top-level keys and named volumes, parses every
service and puts them in start order.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Any, NoReturn, cast

import yaml

from moorage.compose.errors import (
    _ROUTE_ADDRESS,
    _STORED,
    MAX_COMPOSE_BYTES,
    MAX_EXPANDED_BYTES,
    MAX_SERVICES,
    MAX_SPEC_BYTES,
    ComposeError,
    strict,
)
from moorage.compose.interpolation import _escape_dollars, _interpolate
from moorage.compose.models import ProjectSpec, ServiceSpec, VolumeSpec
from moorage.compose.policy import ComposePolicy
from moorage.compose.services import _parse_service
from moorage.compose.values import YamlWord, _mapping, yaml_bool

_VOLUME_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")

TOP_LEVEL_KEYS = frozenset({"services", "version", "name", "volumes"})

VOLUME_KEYS = frozenset({"driver", "driver_opts", "labels", "external", "name"})


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
        if not _VOLUME_NAME_RE.fullmatch(name):  # match() and '$' took "data\n"
            raise ComposeError("volume names may hold letters, digits, '_', '.', '-'", key=where)
        body = {} if body is None else body
        if not isinstance(body, dict):
            raise ComposeError("must be a mapping", key=where)
        for k in body:
            if k == "external" and yaml_bool(body[k]) is not False:
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
            external = body.get("external") if isinstance(body, dict) else None
            if external is not None and yaml_bool(external) is not False:
                raise ComposeError(
                    "external networks are not created by Moorage and are refused",
                    key=f"networks.{name}.external",
                )
    raise ComposeError("top-level key 'networks' is not supported by Moorage", key="networks")


def _refuse_names_alike(names: list[str]) -> None:
    """Refuse two services whose names differ only in case.

    nginx takes upstream names without case: ``Web`` and ``web`` made one upstream twice, and
    every deployment of the project failed ``nginx -t``.
    """
    seen: dict[str, str] = {}
    for name in names:
        first = seen.setdefault(name.lower(), name)
        if first != name:
            raise ComposeError(
                f"service names differ only in case from {first!r} (nginx, one of the routers, "
                "takes them alike)",
                service=name,
            )


def _refuse_shared_route_ports(services: dict[str, ServiceSpec]) -> None:
    """Refuse two routes on one ``published`` port: the router listens on one port per route.

    Only a route's port counts (a service's first TCP port, see ``ServiceSpec.route_port``): the
    router makes it its listen port; the replicas' own published ports are chosen by Moorage.

    Raises:
        ComposeError: naming the second service and ``ports``.
    """
    first: dict[int, str] = {}
    for spec in services.values():
        port = spec.route_port()
        if port is None or port.published is None:
            continue
        if port.published in first:
            raise ComposeError(
                f"published port {port.published} is the route port of service "
                f"{first[port.published]!r} already: the router listens on one port per route",
                service=spec.name,
                key="ports",
            )
        first[port.published] = spec.name


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


class _ComposeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, read the way Docker Compose reads a file.

    A key given twice in one mapping is refused (Compose refuses it; PyYAML keeps the last one
    silently). A key a merge (``<<: *anchor``) brings may be given again: that overrides it.
    Timestamps stay the strings they were written as (``2024-02-30`` is no date to refuse, and
    ``BUILD: 2024-02-01T10:00:00+01:00`` keeps its spelling in the environment).
    ``yes``/``no``/``on``/``off`` are text, as in YAML 1.2 (see :func:`_bool_as_compose`).
    """

    words_seen = False
    """Whether the text holds such a word (PyYAML's YAML 1.1 reading of it differs)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # unhashable: PyYAML's own check refuses it below
                continue
            if first is not None and strict():
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found key {key!r} twice (first at line {first.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


def _timestamp_as_written(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    return str(loader.construct_scalar(cast(yaml.ScalarNode, node)))


def _unicode_str(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    r"""A string scalar, refused when an escape (``"\ud800"``) made it no Unicode text.

    A lone surrogate cannot be encoded: not in a container's environment, not in a workflow's
    history, not in the text the project stores.
    """
    value = str(loader.construct_scalar(cast(yaml.ScalarNode, node)))
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"a string is not valid Unicode text (at character {exc.start})",
            node.start_mark,
        ) from None
    return value


class _ReadsOtherwise(yaml.YAMLError):
    """A plain scalar that PyYAML (YAML 1.1) and Docker Compose (go-yaml) read apart: base 60."""

    def __init__(self, node: yaml.Node, as_11: object):
        mark = node.start_mark
        super().__init__(
            f"line {mark.line + 1}, column {mark.column + 1}: {node.value} reads as {as_11!r} "
            "in YAML 1.1 (as Moorage reads it) and otherwise in YAML 1.2 (as Docker Compose "
            f'reads it): quote it ("{node.value}") for the text, or write what you mean'
        )


def _int_as_compose(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    """An integer; base 60 (``50:50``: 3050), which YAML 1.1 alone has, refused.

    ``ports: [50:50]`` made container port 3050 with no published port; Compose (go-yaml)
    reads the mapping ``50:50``. Octal ``017``, ``0b101`` and ``1_000`` it reads as PyYAML does.
    """
    value = int(loader.construct_yaml_int(cast(yaml.ScalarNode, node)))
    if strict() and ":" in str(node.value):
        raise _ReadsOtherwise(node, value)
    return value


def _float_as_compose(loader: yaml.SafeLoader, node: yaml.Node) -> float:
    """A float; base 60 (``1:30.5``: 90.5), which YAML 1.1 alone has, refused."""
    value = float(loader.construct_yaml_float(cast(yaml.ScalarNode, node)))
    if strict() and ":" in str(node.value):
        raise _ReadsOtherwise(node, value)
    return value


def _bool_as_compose(loader: _ComposeLoader, node: yaml.Node) -> bool | YamlWord:
    """A boolean as Docker Compose reads one (YAML 1.2): ``true``/``false``, no other word.

    ``yes``/``no``/``on``/``off`` are the text they are to Compose
    (:class:`~moorage.compose.values.YamlWord`). A stored revision's text reads them as
    booleans, as it was deployed, unless it declares ``%YAML 1.2``: :func:`resolve_compose`
    marks so every text it stores that holds one.
    """
    text = str(loader.construct_scalar(cast(yaml.ScalarNode, node)))
    if text in _YAML_12_BOOLS:
        return _YAML_12_BOOLS[text]
    if not strict() and loader.yaml_version != YAML_12:
        return bool(loader.construct_yaml_bool(cast(yaml.ScalarNode, node)))
    loader.words_seen = True
    return YamlWord(text)


YAML_12 = (1, 2)
"""The YAML version Docker Compose reads (go-yaml v3)."""


_YAML_12_BOOLS = {
    **dict.fromkeys(("true", "True", "TRUE"), True),
    **dict.fromkeys(("false", "False", "FALSE"), False),
}

_ComposeLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_written)
_ComposeLoader.add_constructor("tag:yaml.org,2002:bool", _bool_as_compose)
_ComposeLoader.add_constructor("tag:yaml.org,2002:str", _unicode_str)
_ComposeLoader.add_constructor("tag:yaml.org,2002:int", _int_as_compose)
_ComposeLoader.add_constructor("tag:yaml.org,2002:float", _float_as_compose)


def _load(text: str) -> dict[str, Any]:
    return _load_read(text)[0]


def _load_read(text: str) -> tuple[dict[str, Any], _ComposeLoader]:
    """The loaded text, and the loader that read it (its YAML version, the words it saw)."""
    try:
        size = len(text.encode())
    except UnicodeEncodeError as exc:  # JSON may carry a lone surrogate ("\ud800")
        raise ComposeError(
            f"the Compose text is not valid Unicode text (at character {exc.start})"
        ) from exc
    if size > MAX_COMPOSE_BYTES:
        raise ComposeError(f"the Compose file is larger than {MAX_COMPOSE_BYTES} bytes")
    loader: _ComposeLoader | None = None
    try:
        # Inside: the reader refuses a control character (\x07) as it is made.
        loader = _ComposeLoader(text)  # a SafeLoader
        raw = loader.get_single_data()
    except _ReadsOtherwise as exc:
        raise ComposeError(str(exc)) from exc
    except yaml.YAMLError as exc:
        raise ComposeError(f"not valid YAML: {exc}") from exc
    except ValueError as exc:  # a number PyYAML cannot convert (an int of over 4,300 digits)
        raise ComposeError(f"not valid YAML: {exc}") from exc
    except RecursionError as exc:  # PyYAML composes nested nodes recursively
        raise ComposeError("the YAML is nested too deeply") from exc
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(raw, dict):
        raise ComposeError("a Compose file must be a mapping with a 'services' key")
    return raw, loader


def resolve_compose(text: str, variables: Mapping[str, str] | None = None) -> str:
    """The Compose text with ``${VAR}`` substituted: what the project stores and deploys.

    Text without ``$`` comes back unchanged (comments and layout kept). Otherwise the result is
    the interpolated document as YAML, with every literal ``$`` written ``$$``, so parsing it
    again (without variables) gives the same project.

    A text that holds a plain ``yes``/``no``/``on``/``off`` comes back declaring ``%YAML 1.2``
    (the one change to its text): stored revisions from before Moorage read them as Compose does
    keep reading them as booleans, as they were deployed; a text so marked reads as it was
    checked, at its deployment, every replay and any rollback to it.

    Raises:
        ComposeError: not valid YAML, a variable that is not set (or invalid interpolation), or
            such a word in a text that declares a YAML version other than 1.2.
    """
    raw, read = _load_read(text)
    marked = read.words_seen and read.yaml_version != YAML_12
    if marked and read.yaml_version is not None:
        raise ComposeError(
            f"the text declares %YAML {'.'.join(map(str, read.yaml_version))}: Moorage reads "
            "Compose files as YAML 1.2, as Docker Compose does (yes, no, on and off are text); "
            "remove the directive"
        )
    if "$" not in text:
        if not marked:
            return text
        explicit = any(
            isinstance(event, yaml.DocumentStartEvent) and event.explicit
            for event in itertools.islice(yaml.parse(text), 2)
        )
        # A byte order mark is dropped (PyYAML skips one only at the very start, and the
        # directive goes first).
        return ("%YAML 1.2\n" if explicit else "%YAML 1.2\n---\n") + text.removeprefix("\ufeff")
    resolved = _escape_dollars(_interpolate(raw, variables))
    return str(
        yaml.dump(
            resolved,
            Dumper=_ComposeDumper,
            sort_keys=False,
            allow_unicode=True,
            version=YAML_12 if read.words_seen else None,
        )
    )


class _ComposeDumper(yaml.SafeDumper):
    """PyYAML's safe dumper that writes a YAML 1.1 word plain again.

    A :class:`~moorage.compose.values.YamlWord` is ``yes``, not ``'yes'``: a key that wants a
    boolean reads it as one after the round trip.
    """


_ComposeDumper.add_representer(
    YamlWord, lambda dumper, word: dumper.represent_scalar("tag:yaml.org,2002:bool", str(word))
)


def parse_compose(
    text: str,
    *,
    variables: Mapping[str, str] | None = None,
    policy: ComposePolicy | None = None,
    stored: bool = False,
    route_address: str | None = None,
) -> ProjectSpec:
    """Parse Compose YAML into a :class:`ProjectSpec`.

    Args:
        text: the Compose file.
        variables: the values of ``${VAR}`` (never read from the server's environment).
        policy: what the tenant may use beyond the safe default (None: the default policy).
        stored: the text of a revision Moorage stored (and deployed) under earlier rules: checks
            added since (:func:`~moorage.compose.errors.strict`) let it pass.
        route_address: the address routes listen on (``MOORAGE_ROUTER_BIND``): a route's port
            that names another host address is refused. None: not checked.

    Raises:
        ComposeError: the text is not valid YAML, not a Compose file, names a variable that is not
            set, or uses what Moorage (or the policy) refuses.
    """
    token = _STORED.set(stored)
    address = _ROUTE_ADDRESS.set(route_address)
    try:
        return _parse(text, variables, policy)
    finally:
        _ROUTE_ADDRESS.reset(address)
        _STORED.reset(token)


def _refuse_expanded(parts: Mapping[str | None, object]) -> None:
    """Refuse a project larger than :data:`MAX_EXPANDED_BYTES` with its aliases expanded.

    An alias costs a few bytes and repeats what it names: 50,000 of them naming a 100 KB string
    in a 256 KiB file made a 5 GB command, accepted, until the deployment's workflow input was
    encoded. Counted without building it: each node costs its length (strings) or its number of
    items (so a container is never walked for free), and the count stops at the limit.
    ``parts``: service name (None: the top-level volumes) → its body as loaded.

    Raises:
        ComposeError: over the limit, naming the service where it was passed.
    """
    budget = MAX_EXPANDED_BYTES
    for service, body in parts.items():
        stack = [body]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                budget -= 2 + 2 * len(node)
                if budget >= 0:
                    stack.extend(node.keys())
                    stack.extend(node.values())
            elif isinstance(node, list):
                budget -= 2 + len(node)
                if budget >= 0:
                    stack.extend(node)
            else:
                budget -= len(node) if isinstance(node, str) else 8
            if budget < 0:
                raise ComposeError(
                    f"the project is larger than {MAX_EXPANDED_BYTES} bytes once its YAML "
                    "aliases are expanded (each alias repeats what it names)",
                    service=service,
                    key=None if service else "volumes",
                )


def _parse(
    text: str, variables: Mapping[str, str] | None, policy: ComposePolicy | None
) -> ProjectSpec:
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
    if strict():  # a check added after texts were stored (see ``strict``)
        _refuse_expanded({None: raw.get("volumes"), **{str(k): v for k, v in services_raw.items()}})
    if strict():  # a check added after texts were stored (see ``strict``)
        _refuse_names_alike(list(services))
    _refuse_shared_route_ports(services)
    declared = {v.name: v for v in volume_specs}
    for spec in services.values():
        for mount in spec.mounts:
            if mount.type == "volume" and mount.source in declared:
                mount.driver_opts = dict(declared[mount.source].driver_opts)
                mount.volume_labels = dict(declared[mount.source].labels)
    project = ProjectSpec(
        services=_start_order(services),
        volumes=[v.name for v in volume_specs],
        volume_specs=volume_specs,
    )
    if strict():  # a check added after texts were stored (see ``strict``)
        _refuse_large_spec(project)
    return project


def _refuse_large_spec(project: ProjectSpec) -> None:
    """Refuse a project whose parsed form is over :data:`MAX_SPEC_BYTES` as JSON.

    Raises:
        ComposeError: naming the largest service.
    """
    size = len(project.model_dump_json().encode())  # UTF-8 bytes: "😀" is 1 char, 4 bytes
    if size <= MAX_SPEC_BYTES:
        return
    sizes = {s.name: len(s.model_dump_json().encode()) for s in project.services}
    largest = max(sizes, key=lambda name: sizes[name])
    raise ComposeError(
        f"the parsed project is {size} bytes, over {MAX_SPEC_BYTES} (it travels in every "
        f"deployment's workflow input); service {largest!r} alone is {sizes[largest]}",
        service=largest,
    )
