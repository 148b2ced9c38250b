"""Compose file → project spec.

Allow-list parsing: every key Moorage understands is turned into a typed field; every other key is
refused with an error that names the service and the key, never silently dropped.

What could hand a tenant the host (privileged containers, extra capabilities, bind mounts, host
devices) is refused by default; an operator allows it per tenant with a :class:`ComposePolicy`
(``MOORAGE_TENANT_POLICIES``).

``${VAR}`` interpolation follows the Compose specification, but variables come only from the
caller (never from the server's environment, which holds secrets), and it runs before validation,
so an interpolated value is checked like a literal one.

The package is imported inside Temporal's workflow sandbox (passed through): its modules must stay
free of import-time side effects (no I/O, no event loop).

Modules, each importing only those listed before it:

- :mod:`~moorage.compose.errors`: :class:`ComposeError` and the size limits.
- :mod:`~moorage.compose.models`: the typed specs (serialized into workflow histories).
- :mod:`~moorage.compose.policy`: :class:`ComposePolicy` and the safe default.
- :mod:`~moorage.compose.values`: durations, memory sizes, CPUs, pids, resource limits.
- :mod:`~moorage.compose.mounts`: privileges, devices, volumes, binds and tmpfs of a service.
- :mod:`~moorage.compose.interpolation`: ``${VAR}`` substitution.
- :mod:`~moorage.compose.services`: one service.
- :mod:`~moorage.compose.parser`: the whole file (:func:`parse_compose`, :func:`resolve_compose`).
"""

from __future__ import annotations

from moorage.compose.errors import (
    MAX_COMPOSE_BYTES,
    MAX_CPUS,
    MAX_EXPANDED_BYTES,
    MAX_INTERPOLATED_BYTES,
    MAX_INTERPOLATED_VALUES,
    MAX_MEMORY_BYTES,
    MAX_PIDS,
    MAX_REPLICAS,
    MAX_SERVICES,
    MAX_SPEC_BYTES,
    MIN_MEMORY_BYTES,
    ComposeError,
)
from moorage.compose.models import (
    DeviceSpec,
    HealthcheckSpec,
    MountSpec,
    PortSpec,
    ProbeSpec,
    ProjectSpec,
    ServiceSpec,
    VolumeSpec,
)
from moorage.compose.mounts import LONG_VOLUME_KEYS
from moorage.compose.parser import TOP_LEVEL_KEYS, VOLUME_KEYS, parse_compose, resolve_compose
from moorage.compose.policy import (
    POLICY_HINT,
    SAFE_CAPABILITIES,
    UNRESTRICTED,
    ComposePolicy,
    normalise_capability,
    normalise_host_path,
)
from moorage.compose.services import (
    DEPLOY_KEYS,
    HEALTHCHECK_KEYS,
    PROBE_KEYS,
    SERVICE_KEYS,
    X_MOORAGE_KEYS,
)
from moorage.compose.values import parse_duration, parse_memory

__all__ = [
    "DEPLOY_KEYS",
    "HEALTHCHECK_KEYS",
    "LONG_VOLUME_KEYS",
    "MAX_COMPOSE_BYTES",
    "MAX_CPUS",
    "MAX_EXPANDED_BYTES",
    "MAX_INTERPOLATED_BYTES",
    "MAX_INTERPOLATED_VALUES",
    "MAX_MEMORY_BYTES",
    "MAX_PIDS",
    "MAX_REPLICAS",
    "MAX_SERVICES",
    "MAX_SPEC_BYTES",
    "MIN_MEMORY_BYTES",
    "POLICY_HINT",
    "PROBE_KEYS",
    "SAFE_CAPABILITIES",
    "SERVICE_KEYS",
    "TOP_LEVEL_KEYS",
    "UNRESTRICTED",
    "VOLUME_KEYS",
    "X_MOORAGE_KEYS",
    "ComposeError",
    "ComposePolicy",
    "DeviceSpec",
    "HealthcheckSpec",
    "MountSpec",
    "PortSpec",
    "ProbeSpec",
    "ProjectSpec",
    "ServiceSpec",
    "VolumeSpec",
    "normalise_capability",
    "normalise_host_path",
    "parse_compose",
    "parse_duration",
    "parse_memory",
    "resolve_compose",
]
