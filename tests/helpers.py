"""Helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import docker
from temporalio.client import WorkflowHistory

from activities.docker_executor import DockerExecutor
from activities.inputs import StartServiceInput
from activities.proxy import route_key
from activities.router import TrafficRouter
from moorage import naming
from moorage.compose import parse_compose
from moorage.models import DeploymentState, DeploymentStatus, DeployRequest, ServiceInstance
from moorage.service import DeploymentService

TENANT = "acme"
USER = "alice"


def tcp_echo(image: str = "moorage-demo:v1", replicas: int = 1) -> str:
    """A project whose ``web`` speaks no HTTP on its route: on port 7000 each connection gets
    the version, then its lines echoed (busybox ``nc``); a TCP route (``x-moorage``)."""
    talk = "nc -ll -p 7000 -e sh -c 'cat /www/version; exec cat' & exec /init.sh"
    return (
        f"services:\n  web:\n    image: {image}\n"
        f'    command: ["sh", "-c", "{talk}"]\n'
        "    ports: ['7000']\n"
        f"    deploy:\n      replicas: {replicas}\n"
        "    x-moorage: {route: tcp, probe: {type: tcp, port: 7000, interval: 100ms}}\n"
    )


def compose(
    web_image: str = "moorage-demo:v1",
    api_image: str | None = "moorage-demo:v1",
    web_replicas: int = 1,
) -> str:
    """A project: ``web`` (depends on ``api`` when there is one)."""
    text = "services:\n"
    if api_image:
        text += f"  api:\n    image: {api_image}\n    ports: ['80']\n"
    text += f"  web:\n    image: {web_image}\n    ports: ['80']\n"
    if web_replicas != 1:
        text += f"    deploy:\n      replicas: {web_replicas}\n"
    if api_image:
        text += "    depends_on: [api]\n"
    return text


async def wait_terminal(
    service: DeploymentService, dep_id: str, timeout: float = 120, tenant: str = TENANT
) -> DeploymentState:
    deadline = time.monotonic() + timeout
    while True:
        state = await service.get_state(tenant, dep_id)
        if state.deployment.status.terminal:
            # The project workflow records the result a moment after the child ends.
            project = await service.get_project(tenant, state.deployment.project_id)
            if project.active_deployment_id != dep_id:
                return await service.get_state(tenant, dep_id)
        if time.monotonic() > deadline:
            raise AssertionError(f"{dep_id} not terminal after {timeout}s: {state.deployment}")
        await asyncio.sleep(0.3)


async def deploy_to_end(
    service: DeploymentService,
    project: str,
    compose_text: str,
    request: DeployRequest,
    status: DeploymentStatus = DeploymentStatus.COMPLETED,
) -> DeploymentState:
    """Apply ``compose_text``, deploy it with ``request``: its end state (``status``, checked)."""
    await service.apply_project(TENANT, project, compose_text)
    dep = await service.deploy(TENANT, USER, project, request)
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == status, state.deployment.message
    return state


async def wait_status(
    service: DeploymentService,
    dep_id: str,
    predicate: Callable[[DeploymentState], bool],
    timeout: float = 60,
    tenant: str = TENANT,
) -> DeploymentState:
    deadline = time.monotonic() + timeout
    while True:
        state = await service.get_state(tenant, dep_id)
        if predicate(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{dep_id}: condition not met after {timeout}s: {state.deployment}"
            )
        await asyncio.sleep(0.2)


def labelled(client: docker.DockerClient, project: str, **labels: str) -> list[Any]:
    filters = [f"{naming.LABEL_PROJECT}={project}"] + [
        f"moorage.{k}={v}" for k, v in labels.items()
    ]
    found: list[Any] = client.containers.list(all=True, filters={"label": filters})
    return found


def get_version(url: str) -> str:
    """What a route (or a replica) at ``url`` answers for ``/version``."""
    with urllib.request.urlopen(url + "version", timeout=5) as answer:
        return str(answer.read().decode().strip())


def version_once_up(url: str, timeout: float = 15) -> str:
    """:func:`get_version` once ``url`` answers: a container just started, with no health gate
    passed, may not listen yet (seen in CI with the suite in two processes)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return get_version(url)
        except OSError as exc:  # refused, reset: nothing listens yet
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer within {timeout}s: {exc}") from exc
            time.sleep(0.05)


def wait_until(check: Callable[[], bool], timeout: float = 15, what: str = "") -> None:
    """Poll ``check`` until it is true; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what or check}"
        time.sleep(0.05)


def serving_version(client: docker.DockerClient, project: str, service: str) -> set[str]:
    """The versions the running containers of ``service`` answer with (via loopback ports)."""
    versions = set()
    for c in client.containers.list(
        filters={
            "label": [f"{naming.LABEL_PROJECT}={project}", f"{naming.LABEL_SERVICE}={service}"]
        }
    ):
        c.reload()
        binding = c.attrs["NetworkSettings"]["Ports"]["80/tcp"][0]
        url = f"http://{binding['HostIp']}:{binding['HostPort']}/version"
        with urllib.request.urlopen(url, timeout=5) as resp:
            versions.add(resp.read().decode().strip())
    return versions


def routed(router: TrafficRouter, project: str, service: str = "web") -> set[str]:
    """The servers the running proxy sends a route's requests to (draining ones included)."""
    route = router.load().routes[route_key(TENANT, project, service)]
    return set(router.backend.live_servers(route))


def web_input(project: str, compose_text: str, slots: list[int] | None = None) -> StartServiceInput:
    """The start of replicas (default: slot 0) of revision 1 of ``web``."""
    return StartServiceInput(
        tenant=TENANT,
        project=project,
        deployment_id="d",
        revision=1,
        version="v1",
        service=parse_compose(compose_text).service("web"),
        slots=slots or [0],
    )


def start_web(
    client: docker.DockerClient,
    project: str,
    compose_text: str,
    slots: list[int] | None = None,
    executor: DockerExecutor | None = None,
) -> list[ServiceInstance]:
    """Start replicas (default: slot 0) of revision 1 of ``web`` straight through the executor."""
    return (executor or DockerExecutor(client)).start_service(
        web_input(project, compose_text, slots)
    )


def local_activity_markers(history: WorkflowHistory) -> list[dict[str, Any]]:
    """What a history's local-activity markers record, in order (``activity_type``, ``attempt``…,
    and ``result``: what it returned, as JSON, None when it failed).

    A local activity has no events of its own: the workflow task that ran it records a
    ``core_local_activity`` marker with its result once the task completes.
    """
    markers = []
    for e in history.events:
        marker = e.marker_recorded_event_attributes
        if marker.marker_name != "core_local_activity":
            continue
        found = json.loads(marker.details["data"].payloads[0].data)
        result = marker.details["result"].payloads if "result" in marker.details else []
        found["result"] = json.loads(result[0].data) if result else None
        markers.append(found)
    return markers


def worker_ports(first: int, last: int) -> range:
    """This test process's share of the port range ``first``-``last``.

    ``scripts/test.sh`` runs the suite in several pytest-xdist workers at once, on one machine:
    each gets an equal slice of every fixed range a test binds in (its routers' listen ports, the
    ports it probes for), so two tests never race for one port. Run alone, a process gets it all.
    """
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    size = (last - first + 1) // count
    return range(first + index * size, first + (index + 1) * size)


def worker_port_span(first: int, last: int) -> tuple[int, int]:
    """:func:`worker_ports` as (first, last)."""
    ports = worker_ports(first, last)
    return ports[0], ports[-1]


def worker_port_setting(first: int, last: int) -> str:
    """:func:`worker_ports` written as a range setting (``MOORAGE_ROUTE_PORTS``): ``a-b``."""
    return "{}-{}".format(*worker_port_span(first, last))


FREE_PORTS = worker_ports(26000, 31999)
"""Where :func:`free_port` looks: below the kernel's ephemeral range (32768 and up here), clear of
every route range the tests use (21000-25499); this worker's slice of 26000-31999."""


def free_port() -> int:
    """One port as :func:`free_ports`."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` different ports nothing listens on at 127.0.0.1, for servers a test starts.

    Not one the kernel hands out (a bind to port 0): the kernel may hand it out again before the
    server binds it, to another bind to port 0 (the Temporal dev server picks its internal ports
    so) or as the local port of an outgoing connection. In CI (session 10) the Temporal Web UI of
    ``moorage dev`` failed to start: the port the test had picked that way was taken.

    Raises:
        RuntimeError: not ``n`` free ports in :data:`FREE_PORTS`.
    """
    found: list[int] = []
    for port in random.sample(FREE_PORTS, 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == n:
            return found
    raise RuntimeError(f"not {n} free ports in {FREE_PORTS}")
