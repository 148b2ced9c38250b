"""Host ports of replicas: the engine's ephemeral ones, or, under a restart policy, Moorage's own.

Every replica publishes its ports on loopback only (nothing is exposed beyond this host), each on
a host port of its own, so replicas of one service never collide. The engine picks an ephemeral
port when it starts a container, and picks again each time it restarts one: a replica its restart
policy restarted would move, and the router would still send its share of requests to the old
port. So a service with a restart policy gets ports chosen here, which the engine keeps across
restarts.

They come from ``MOORAGE_REPLICA_PORTS`` (17000-19999), below the kernel's ephemeral range: a port
from there could be handed to an outgoing connection, or to the engine's ephemeral ports of other
containers, while its replica is down between a crash and its restart, and its restart would then
fail, or another replica would take it and get its route's traffic. A port stays its replica's
for the replica's whole life: one published by any container Moorage labelled, running or not,
is never chosen again.
"""

from __future__ import annotations

import socket
from typing import Any

import docker
import docker.errors
from temporalio.exceptions import ApplicationError

from moorage import naming
from moorage.compose import ServiceSpec

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


class ReplicaPorts:
    """Chooses host ports from ``first``-``last`` that no labelled container publishes."""

    def __init__(self, api: docker.APIClient, first: int, last: int):
        self.api = api
        self.first = first
        self.last = last

    def published(self) -> set[int]:
        """Host ports the port bindings of every container Moorage labelled ask for."""
        ports: set[int] = set()
        for summary in self.api.containers(all=True, filters={"label": naming.LABEL_TENANT}):
            try:
                info: dict[str, Any] = self.api.inspect_container(summary["Id"])
            except docker.errors.NotFound:
                continue
            for bindings in ((info.get("HostConfig") or {}).get("PortBindings") or {}).values():
                for binding in bindings or []:
                    if str(binding.get("HostPort") or "").isdigit():
                        ports.add(int(binding["HostPort"]))
        return ports

    def choose(self, spec: ServiceSpec, refused: set[int]) -> PortBindings:
        """A host port for each of the service's ports.

        Each is the lowest in the range that no labelled container publishes, that the engine has
        not ``refused`` in this start, and that nothing holds now.

        Raises:
            ApplicationError: ``NoFreePort`` (retryable: ports come free as replicas go).
        """
        avoid = self.published() | refused
        chosen: PortBindings = {}
        for port_spec in spec.ports:
            port = next(
                (
                    p
                    for p in range(self.first, self.last + 1)
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
        return chosen
