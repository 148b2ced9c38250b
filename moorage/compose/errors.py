"""The error every refusal raises, and the size limits of a Compose project."""

from __future__ import annotations

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
