"""A service's privileges, devices and mounts: what could hand a tenant the host.

``privileged``, ``cap_add``, ``devices`` and bind mounts are refused unless safe or allowed by the
tenant's :class:`~moorage.compose.policy.ComposePolicy`; ``cap_drop``, named volumes and tmpfs
mounts are always fine.
"""

from __future__ import annotations

import posixpath
from typing import Any

from moorage.compose.errors import ComposeError
from moorage.compose.models import DeviceSpec, MountSpec, ServiceSpec
from moorage.compose.policy import (
    POLICY_HINT,
    SAFE_CAPABILITIES,
    ComposePolicy,
    normalise_capability,
    normalise_host_path,
)
from moorage.compose.values import _known_keys, _memory_bytes, boolean

_ENGINE_SOCKETS = frozenset({"docker.sock", "containerd.sock", "podman.sock"})
_SHORT_VOLUME_OPTIONS = frozenset({"ro", "rw", "nocopy", "cached", "delegated", "consistent"})
LONG_VOLUME_KEYS = frozenset(
    {"type", "source", "target", "read_only", "consistency", "volume", "bind", "tmpfs"}
)


# fmt: off
LINUX_CAPABILITIES = frozenset({
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
})
# fmt: on
"""Linux's capabilities (``capabilities(7)``), without ``CAP_``: Docker refuses any other name
(``ALL`` aside) when it creates the container."""


def _capabilities(value: Any, *, service: str, key: str) -> list[str]:
    """``cap_add`` / ``cap_drop``: Linux capability names (``CAP_`` or not, any case) or ``ALL``.

    Raises:
        ComposeError: not a list, or an entry that names no Linux capability.
    """
    if not isinstance(value, list):
        raise ComposeError("must be a list of capability names", service=service, key=key)
    names: list[str] = []
    for item in value:
        name = normalise_capability(item) if isinstance(item, str) else None
        if name is None or (name not in LINUX_CAPABILITIES and name != "ALL"):
            raise ComposeError(
                f"{item!r} is not a Linux capability (e.g. NET_ADMIN or CAP_NET_ADMIN, or ALL)",
                service=service,
                key=key,
            )
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
        privileged = boolean(raw["privileged"], service=name, key="privileged")
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
        # Dropping a capability only takes power away: any one, and ALL, is fine.
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
    return _known_keys(
        value,
        allowed,
        service=service,
        key=f"volumes.{section}",
        refusal="is not supported by Moorage",
    )


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
    read_only = boolean(item.get("read_only", False), service=service, key="volumes.read_only")
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
    nocopy = boolean(
        _options(item, "volume", {"nocopy"}, service=service).get("nocopy", False),
        service=service,
        key="volumes.volume.nocopy",
    )
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
