"""Host ports of replicas: the engine's ephemeral ones, or, under a restart policy, Moorage's own.

Every replica publishes its ports on loopback only (nothing is exposed beyond this host), each on
a host port of its own, so replicas of one service never collide. The engine picks an ephemeral
port when it starts a container, and picks again each time it restarts one: a replica its restart
policy restarted would move, and the router would still send its share of requests to the old
port. So a service with a restart policy gets ports chosen here, which the engine keeps across
restarts.

They come from ``MOORAGE_REPLICA_PORTS`` (17000-19999), below the kernel's default ephemeral range
(32768-60999; the worker warns when ``ip_local_port_range`` reaches into it): a port from there
could be handed to an outgoing connection, or to the engine's ephemeral ports of other containers,
while its replica is down between a crash and its restart, and its restart would then fail, or
another replica would take it and get its route's traffic. No other Moorage replica gets a port
while its replica lives: one published by any container Moorage labelled, running or not, is
never chosen (a host process outside Moorage still can take it).

The choice goes round the range, from just past the port this worker chose last (at its start,
past the highest one a labelled container publishes), not back to the lowest free port: while the
worker runs, a port a removed replica freed is given out again only once the rest of the range has
been, so anything that still points at it (a stale router entry, a client's cached address) finds
nothing there rather than another replica.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors
from temporalio.exceptions import ApplicationError

from moorage import naming
from moorage.compose import ServiceSpec

logger = logging.getLogger(__name__)

PORT_ATTEMPTS = 5
"""How many times a replica with chosen ports is made again when the engine found one taken."""

PortBindings = dict[str, tuple[str, int | None]]


def ephemeral(spec: ServiceSpec) -> PortBindings:
    """The engine picks each host port (on loopback) when it starts the container."""
    return {p.key: ("127.0.0.1", None) for p in spec.ports}


def port_taken(exc: docker.errors.APIError) -> bool:
    """The engine could not publish a port: another container or a host process holds it."""
    text = str(exc.explanation or exc)
    return "port is already allocated" in text or "address already in use" in text


def bindable(port: int, protocol: str) -> bool:
    """Whether nothing on this host holds ``port`` on loopback now."""
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


RESERVED_S = 60.0
"""How long a port chosen in this process is kept from other choices: by then its container is
made (the engine lists its bindings) or its start has failed."""


def bound_ports(info: dict[str, Any]) -> set[int]:
    """The host ports a container's port bindings ask for (none: the engine's ephemeral ones)."""
    bindings = ((info.get("HostConfig") or {}).get("PortBindings") or {}).values()
    return {
        int(b["HostPort"]) for bs in bindings for b in bs or [] if str(b.get("HostPort")).isdigit()
    }


def kernel_ephemeral_range() -> tuple[int, int] | None:
    """The kernel's ``ip_local_port_range`` (None where it cannot be read)."""
    try:
        first, last = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(first), int(last)
    except (OSError, ValueError):
        return None


class ReplicaPorts:
    """Chooses host ports from ``first``-``last`` that no labelled container publishes."""

    def __init__(self, api: docker.APIClient, first: int, last: int):
        self.api = api
        self.first = first
        self.last = last
        # Starts run side by side on the worker's threads: a port chosen by one and not yet in a
        # container is kept from the others (a start in another process may still clash, and is
        # made again on another port).
        self._lock = threading.Lock()
        self._reserved: dict[int, float] = {}
        self._next: int | None = None
        """Where the next choice starts looking (None: not known yet)."""
        kernel = kernel_ephemeral_range()
        if kernel and kernel[0] <= last and first <= kernel[1]:
            logger.warning(
                "MOORAGE_REPLICA_PORTS %d-%d overlaps the kernel's ephemeral ports %d-%d "
                "(net.ipv4.ip_local_port_range): an outgoing connection may take the port of a "
                "replica that is restarting",
                first,
                last,
                *kernel,
            )

    def published(self) -> set[int]:
        """Host ports the port bindings of every container Moorage labelled ask for."""
        ports: set[int] = set()
        for summary in self.api.containers(all=True, filters={"label": naming.LABEL_TENANT}):
            try:
                info: dict[str, Any] = self.api.inspect_container(summary["Id"])
            except docker.errors.NotFound:
                continue
            ports |= bound_ports(info)
        return ports

    def choose(self, spec: ServiceSpec, refused: set[int]) -> PortBindings:
        """A host port for each of the service's ports.

        Each is the first in the range, going round from just past the last one chosen, that no
        labelled container publishes, that the engine has not ``refused`` in this start, and that
        nothing holds now.

        Raises:
            ApplicationError: ``NoFreePort`` (retryable: ports come free as replicas go).
        """
        if not spec.ports:
            return {}
        published = self.published()
        with self._lock:
            now = time.monotonic()
            self._reserved = {p: t for p, t in self._reserved.items() if now - t < RESERVED_S}
            if self._next is None:
                ours = [p for p in published if self.first <= p <= self.last]
                self._next = max(ours) + 1 if ours else self.first
            chosen = self._choose(spec, published | refused | set(self._reserved))
            for _, port in chosen.values():
                assert port is not None
                self._reserved[port] = now
        return chosen

    def _choose(self, spec: ServiceSpec, avoid: set[int]) -> PortBindings:
        chosen: PortBindings = {}
        for port_spec in spec.ports:
            start = self._next if self._next is not None and self._next <= self.last else self.first
            port = next(
                (
                    p
                    for p in (*range(start, self.last + 1), *range(self.first, start))
                    if p not in avoid and bindable(p, port_spec.protocol)
                ),
                None,
            )
            if port is None:
                raise ApplicationError(
                    f"service {spec.name}: no free host port in MOORAGE_REPLICA_PORTS "
                    f"{self.first}-{self.last} for its replicas (a restart policy keeps each "
                    "replica on a port of its own)",
                    type="NoFreePort",
                )
            chosen[port_spec.key] = ("127.0.0.1", port)
            avoid.add(port)
            self._next = port + 1
        return chosen
