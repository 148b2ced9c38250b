"""The error every refusal raises, and the size limits of a Compose project."""

from __future__ import annotations

from contextvars import ContextVar

_STORED: ContextVar[bool] = ContextVar("moorage_compose_stored", default=False)


_ROUTE_ADDRESS: ContextVar[str | None] = ContextVar("moorage_compose_route_address", default=None)


def route_address() -> str | None:
    """The address routes listen on (``MOORAGE_ROUTER_BIND``), when the caller knows it."""
    return _ROUTE_ADDRESS.get()


def strict() -> bool:
    """False while a stored revision's text is parsed (``parse_compose(..., stored=True)``).

    A check added after texts were stored must not refuse them: the serving revision's text is
    parsed at every deployment (its replicas are stopped by it) and at every replay of its
    workflow, and one that no longer parsed would stop the project. Such a check runs only when
    this is True; a text it refused was deployable before (a duplicate key, a grace period over
    the cap), or it would not be a stored revision.
    """
    return not _STORED.get()


MAX_COMPOSE_BYTES = 256 * 1024
"""Largest Compose text accepted."""
MAX_INTERPOLATED_BYTES = 1024 * 1024
"""Largest total size of the strings interpolation produces (a variable used many times, or in
strings YAML aliases repeat, must not blow memory up)."""
MAX_INTERPOLATED_VALUES = 250_000
"""Most values interpolation visits (YAML aliases can repeat a node exponentially often)."""
MAX_EXPANDED_BYTES = 1024 * 1024
"""Largest size of a project's services and volumes once every YAML alias repeats what it names
(strings by length, mappings and lists by item): bounds what parsing builds."""
MAX_SPEC_BYTES = 768 * 1024
"""Largest parsed project, as JSON. It travels in its deployments' workflow inputs, which
Temporal caps at 2 MiB, with the serving revision's beside it; a small file can be larger
parsed (20,000 ``tmpfs`` entries: 169 KB of YAML, 2.4 MB of spec)."""
MAX_SERVICES = 50
"""Most services one project may hold."""
MIN_MEMORY_BYTES = 6 * 1024 * 1024
"""Docker's smallest memory limit."""
MAX_MEMORY_BYTES = 2**62
"""Largest memory size accepted (Docker keeps sizes in a signed 64-bit integer)."""
MAX_CPUS = 1024.0
MAX_PIDS = 4_194_304
"""Linux's largest ``pid_max``."""
MAX_REPLICAS = 50

# Durations (seconds). Each is bounded: a value past what a timedelta or Docker's int64
# nanoseconds hold would only fail inside the deployment's workflow.
MAX_DURATION_S = 365 * 86_400.0
"""Largest duration any key takes (a key with no cap of its own: one that only accepts 0)."""
MAX_STOP_GRACE_PERIOD_S = 3600.0
"""Largest ``stop_grace_period``: an hour between the stop signal and SIGKILL."""
MIN_HEALTHCHECK_DURATION_S = 0.001
"""Docker refuses a healthcheck ``interval``, ``timeout`` or ``start_period`` under 1 ms (0 is
its default)."""
MAX_HEALTHCHECK_DURATION_S = 86_400.0
"""Largest healthcheck ``interval``, ``timeout`` or ``start_period``: a day."""
MAX_HEALTHCHECK_RETRIES = 10_000
"""Largest healthcheck ``retries``."""
MAX_HEALTH_CHECK_DELAY_S = 3600.0
"""Largest ``x-moorage.health_check_delay``, as the deployment's ``health_check_delay``."""
MAX_MIN_READY_S = 3600.0
"""Largest ``x-moorage.min_ready_seconds``."""
MIN_PROBE_INTERVAL_S = 0.01
"""Smallest ``x-moorage.probe.interval`` (0 would poll the engine and the replica in a loop)."""
MAX_PROBE_INTERVAL_S = 600.0
"""Largest ``x-moorage.probe.interval``, as the deployment's ``health_check_interval``."""
MIN_PROBE_TIMEOUT_S = 0.001
"""Smallest ``x-moorage.probe.timeout`` (0 makes the socket non-blocking: every probe fails)."""
MAX_PROBE_TIMEOUT_S = 5.0
"""Largest ``x-moorage.probe.timeout``: the health wait sends no heartbeat while a probe runs, and
its heartbeat times out after 10 s."""


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
