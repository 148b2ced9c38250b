"""Fault injection on the real parts: cancel in every phase, the Temporal server restarted
mid-rollout, the worker killed while it switches traffic."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import uuid
from pathlib import Path

import docker
import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from activities.haproxy import HAProxyBackend
from activities.proxy import route_key
from activities.router import TrafficRouter
from moorage import naming
from moorage.models import CanaryStep, DeploymentStatus, DeployRequest, EventType, Strategy
from moorage.service import DeploymentService
from moorage.settings import Settings
from tests.conftest import temporal_binary
from tests.helpers import (
    TENANT,
    USER,
    free_port,
    labelled,
    local_activity_markers,
    routed,
    wait_status,
    wait_terminal,
    worker_port_setting,
)
from tests.load import Load
from tests.test_worker_crash import start_worker
from worker import build_router
from workflows import search_attributes as sa

FAULT_ROUTE_PORTS = worker_port_setting(22000, 22999)
"""The listen ports of the routers of the workers these tests start and kill."""

pytestmark = pytest.mark.integration


def web(image: str, replicas: int = 3) -> str:
    return (
        f"services:\n  web:\n    image: {image}\n    ports: ['80']\n"
        f"    deploy:\n      replicas: {replicas}\n    stop_grace_period: 5s\n"
    )


async def serve_v1(service: DeploymentService, project: str) -> str:
    await service.apply_project(TENANT, project, web("moorage-demo:v1"))
    dep = await service.deploy(
        TENANT, USER, project, DeployRequest(strategy=Strategy.ROLLING_UPDATE, version="v1")
    )
    assert (await wait_terminal(service, dep.id)).deployment.status == DeploymentStatus.COMPLETED
    return (await service.get_project(TENANT, project)).routes["web"]


def passed(n: int):  # type: ignore[no-untyped-def]
    return lambda s: sum(e.event_type == EventType.HEALTH_CHECK_PASSED for e in s.events) >= n


PHASES = {
    "rolling-mid-roll": (
        DeployRequest(strategy=Strategy.ROLLING_UPDATE, health_check_delay=1),
        passed(1),
    ),
    "blue-green-awaiting-promotion": (
        DeployRequest(strategy=Strategy.BLUE_GREEN, auto_promote=False),
        lambda s: "waiting for promotion" in s.deployment.message,
    ),
    "canary-paused-at-50": (
        DeployRequest(
            strategy=Strategy.CANARY,
            canary_steps=[
                CanaryStep(weight=50),
                CanaryStep(pause="manual"),
                CanaryStep(weight=100),
            ],
        ),
        lambda s: "paused until resumed" in s.deployment.message,
    ),
}


@pytest.mark.parametrize("phase", list(PHASES))
async def test_cancel_in_each_phase_leaves_the_project_as_it_was(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
    phase: str,
) -> None:
    url = await serve_v1(service, project)
    before = {c.name for c in labelled(docker_client, project)}
    key = route_key(TENANT, project, "web")
    routes_before = router.load().routes[key].servers
    await service.apply_project(TENANT, project, web("moorage-demo:v2"))
    request, reached = PHASES[phase]
    with Load(url, connections=4, keepalive=True) as load:
        dep = await service.deploy(TENANT, USER, project, request)
        await wait_status(service, dep.id, reached)
        await service.cancel(TENANT, "erin", dep.id)
        state = await wait_terminal(service, dep.id, timeout=90)
        await asyncio.sleep(0.3)
    assert state.deployment.status == DeploymentStatus.CANCELLED, state.deployment.message
    assert load.result.failed == 0, load.result.errors
    assert load.last_versions(20) == {"v1"}
    assert {c.name for c in labelled(docker_client, project)} == before
    after = router.load().routes[key].servers
    assert set(after) == set(routes_before)
    assert {s.weight for s in after.values()} == {100}
    assert routed(router, project) == before
    assert any(
        e.event_type == EventType.DEPLOYMENT_CANCELLED and "erin" in e.message for e in state.events
    )


async def start_temporal(db: Path, port: int) -> asyncio.subprocess.Process:
    args = [
        temporal_binary(),
        "server",
        "start-dev",
        "--db-filename",
        str(db),
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--headless",
        "--log-level",
        "error",
        *sa.cli_flags(),
    ]
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            await asyncio.sleep(0.1)
    raise AssertionError("temporal dev server did not start")


async def test_temporal_server_restarted_mid_rollout(
    docker_client: docker.DockerClient, project: str, tmp_path: Path
) -> None:
    port = free_port()
    db = tmp_path / "temporal.db"
    server = await start_temporal(db, port)
    address = f"127.0.0.1:{port}"
    queue = f"moorage-restart-{uuid.uuid4().hex[:6]}"
    router_dir = tmp_path / "router"
    worker = await start_worker(address, queue, router_dir)
    try:
        client = await Client.connect(address, data_converter=pydantic_data_converter)
        service = DeploymentService(client, Settings(task_queue=queue))
        await service.apply_project(TENANT, project, web("moorage-demo:v1", replicas=4))
        dep = await service.deploy(
            TENANT,
            USER,
            project,
            DeployRequest(strategy=Strategy.ROLLING_UPDATE, version="v1", health_check_delay=1),
        )
        await wait_status(service, dep.id, passed(1))
        os.killpg(server.pid, signal.SIGTERM)
        await server.wait()
        await asyncio.sleep(2)  # the worker keeps going, its calls to Temporal fail and retry
        server = await start_temporal(db, port)
        state = await wait_terminal(service, dep.id, timeout=120)
        assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
        containers = labelled(docker_client, project)
        assert len(containers) == 4
        assert {c.labels["moorage.slot"] for c in containers} == {"0", "1", "2", "3"}
        assert all(c.status == "running" for c in containers)
    finally:
        if worker.returncode is None:
            worker.terminate()
            await worker.wait()
        if server.returncode is None:
            os.killpg(server.pid, signal.SIGTERM)
            await server.wait()
        HAProxyBackend(router_dir).stop()


async def test_worker_killed_after_a_replica_passed_its_gate_completes_the_roll(
    temporal_client: Client, docker_client: docker.DockerClient, project: str, tmp_path: Path
) -> None:
    queue = f"moorage-kill-{uuid.uuid4().hex[:6]}"
    router_dir = tmp_path / "router"
    address = temporal_client.service_client.config.target_host
    service = DeploymentService(temporal_client, Settings(task_queue=queue))
    worker = await start_worker(address, queue, router_dir)
    try:
        await service.apply_project(TENANT, project, web("moorage-demo:v1"))
        first = await service.deploy(
            TENANT, USER, project, DeployRequest(strategy=Strategy.ROLLING_UPDATE)
        )
        await wait_terminal(service, first.id)
        await service.apply_project(TENANT, project, web("moorage-demo:v2"))
        dep = await service.deploy(
            TENANT, USER, project, DeployRequest(strategy=Strategy.ROLLING_UPDATE)
        )
        # The first new replica is healthy: the next steps route it and drain the old one. (The
        # kill lands in whatever step runs when the event is seen: the switch, or one after it.)
        await wait_status(service, dep.id, passed(1))
        worker.send_signal(signal.SIGKILL)
        await worker.wait()
        worker = await start_worker(address, queue, router_dir)
        state = await wait_terminal(service, dep.id, timeout=120)
        assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
        router = HAProxyBackend(router_dir)
        containers = {c.name for c in labelled(docker_client, project)}
        assert len(containers) == 3
        assert all(
            c.labels["moorage.revision"] == str(dep.revision)
            for c in labelled(docker_client, project)
        )
        r = build_router(
            Settings(router_dir=router_dir, route_ports=FAULT_ROUTE_PORTS), docker_client
        )
        assert (
            set(router.live_servers(r.load().routes[route_key(TENANT, project, "web")]))
            == containers
        )
    finally:
        if worker.returncode is None:
            worker.terminate()
            await worker.wait()
        HAProxyBackend(router_dir).stop()


class HoldingEngineProxy:
    """The engine's API socket passed through a socket of the test's own, which can hold a request.

    Armed, it holds the first ``DELETE /…/containers/…`` it sees: never forwarded, never answered,
    its connection kept open. The caller in the worker waits for the answer as long as it lives.
    """

    def __init__(self, path: Path):
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        if not host.startswith("unix://"):
            pytest.fail(f"this test proxies the engine's unix socket; DOCKER_HOST={host}")
        self.upstream = host.removeprefix("unix://")
        self.path = path
        self.armed = False
        self.held = asyncio.Event()
        self.held_request = b""

    async def __aenter__(self) -> HoldingEngineProxy:
        self.server = await asyncio.start_unix_server(self._connection, path=str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _connection(
        self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter
    ) -> None:
        engine, to_engine = await asyncio.open_unix_connection(self.upstream)

        async def requests() -> None:
            while data := await client.read(65536):
                line = data.split(b"\r\n", 1)[0]
                if self.armed and line.startswith(b"DELETE /") and b"/containers/" in line:
                    self.armed = False
                    self.held_request = line
                    self.held.set()
                    while await client.read(65536):  # hold it until the caller is gone
                        pass
                    break
                to_engine.write(data)
                await to_engine.drain()
            to_engine.close()

        async def answers() -> None:
            while data := await engine.read(65536):
                to_client.write(data)
                await to_client.drain()
            to_client.close()

        await asyncio.gather(requests(), answers(), return_exceptions=True)


async def test_worker_killed_inside_a_local_step(
    temporal_client: Client, docker_client: docker.DockerClient, project: str, tmp_path: Path
) -> None:
    """A quick step runs as a local activity inside a workflow task: a worker killed while it
    runs loses that task. Temporal gives the task to the next worker after its timeout, which
    runs the step again (the removal of the first old replica, held at the engine's socket
    until the kill: the step was in the middle of its engine call)."""
    queue = f"moorage-kill-la-{uuid.uuid4().hex[:6]}"
    router_dir = tmp_path / "router"
    address = temporal_client.service_client.config.target_host
    service = DeploymentService(temporal_client, Settings(task_queue=queue))
    async with HoldingEngineProxy(tmp_path / "engine.sock") as proxy:
        worker = await start_worker(address, queue, router_dir, docker_host=f"unix://{proxy.path}")
        try:
            await serve_v1(service, project)
            old = {c.id: c.name for c in labelled(docker_client, project)}
            await service.apply_project(TENANT, project, web("moorage-demo:v2"))
            proxy.armed = True
            dep = await service.deploy(
                TENANT, USER, project, DeployRequest(strategy=Strategy.ROLLING_UPDATE)
            )
            await asyncio.wait_for(proxy.held.wait(), 60)
            held = [cid for cid in old if cid.encode() in proxy.held_request]
            assert len(held) == 1, (proxy.held_request, old)  # the removal of an old replica
            worker.send_signal(signal.SIGKILL)
            assert await worker.wait() == -signal.SIGKILL
            assert old[held[0]] in {c.name for c in labelled(docker_client, project)}
            worker = await start_worker(address, queue, router_dir)
            state = await wait_terminal(service, dep.id, timeout=120)
            assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
            containers = labelled(docker_client, project)
            assert len(containers) == 3
            assert {c.labels["moorage.revision"] for c in containers} == {str(dep.revision)}
            assert not set(old) & {c.id for c in containers}  # the held one too is gone
            router = build_router(
                Settings(router_dir=router_dir, route_ports=FAULT_ROUTE_PORTS), docker_client
            )
            assert routed(router, project) == {c.name for c in containers}
        finally:
            if worker.returncode is None:
                worker.terminate()
                await worker.wait()
            HAProxyBackend(router_dir).stop()
    history = await service.client.get_workflow_handle(
        naming.deployment_workflow_id(TENANT, dep.id)
    ).fetch_history()
    # The killed worker's task left no marker (its removal ran again in the next worker's task):
    # one removal per replica, and the lost task timed out.
    removals = [
        m for m in local_activity_markers(history) if m["activity_type"] == "remove_containers"
    ]
    assert len(removals) == 3, removals
    assert any(e.HasField("workflow_task_timed_out_event_attributes") for e in history.events)


DOCKERD_PIDFILE = Path("/var/run/docker.pid")
ENSURE_ENGINE = Path(__file__).resolve().parent.parent / "scripts" / "ensure-engine.sh"


def dockerd_pid() -> int:
    """The local dockerd's pid (this test restarts it: a remote engine cannot be)."""
    if not DOCKERD_PIDFILE.exists():
        pytest.fail("this test restarts the local dockerd: no /var/run/docker.pid", pytrace=False)
    return int(DOCKERD_PIDFILE.read_text().strip())


async def restart_dockerd(down_for: float) -> float:
    """Stop the local dockerd (SIGTERM, as a service manager would), wait, start it again.

    Returns:
        The monotonic time the new dockerd was started at.
    """
    pid = dockerd_pid()
    os.kill(pid, signal.SIGTERM)
    for _ in range(300):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("dockerd did not stop within 30 s")
    await asyncio.sleep(down_for)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(str(ENSURE_ENGINE))
    assert await proc.wait() == 0, "scripts/ensure-engine.sh could not start dockerd again"
    return started


@pytest.mark.exclusive  # every other test's containers and engine calls see the restart
async def test_dockerd_restarted_mid_rollout(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
) -> None:
    # Without live-restore a dockerd restart stops every container: that is a setup error
    # (scripts/ensure-engine.sh starts dockerd with it), not something to skip.
    assert docker_client.info()["LiveRestoreEnabled"], "dockerd must run with live-restore"
    url = await serve_v1(service, project)
    await service.apply_project(TENANT, project, web("moorage-demo:v2", replicas=4))
    with Load(url, connections=4, keepalive=True) as load:
        dep = await service.deploy(
            TENANT,
            USER,
            project,
            DeployRequest(strategy=Strategy.ROLLING_UPDATE, version="v2", health_check_delay=1),
        )
        await wait_status(service, dep.id, passed(1))
        t0 = time.monotonic()
        started = await restart_dockerd(down_for=2)
        up = time.monotonic()
        state = await wait_terminal(service, dep.id, timeout=180)
        await asyncio.sleep(0.3)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    # The replicas kept serving while dockerd was away (live-restore; port rules in iptables).
    # While the new dockerd starts it rewrites its port rules and every published port refuses
    # connections for ~0.25 s: HAProxy retries those on the same server after 1 s. No request
    # fails.
    failures = [(round(t - t0, 2), e) for t, e in load.result.failures]
    assert load.result.failed == 0, (
        f"dockerd down at 0, started at {started - t0:.2f}s, up at {up - t0:.2f}s",
        failures[:5],
        failures[-5:],
    )
    assert load.result.ok > 50
    assert load.last_versions(20) == {"v2"}
    containers = labelled(docker_client, project)
    assert len(containers) == 4
    assert all(c.status == "running" for c in containers)
    assert {c.labels["moorage.revision"] for c in containers} == {str(dep.revision)}
    assert routed(router, project) == {c.name for c in containers}
    assert sum(e.event_type == EventType.SERVICE_UPDATED for e in state.events) == 1
    # The engine really was gone under the rollout: some step failed and was retried (the
    # Temporal UI shows the attempts; the deployment's own events show an ordinary rollout).
    history = await service.client.get_workflow_handle(
        naming.deployment_workflow_id(TENANT, dep.id)
    ).fetch_history()
    attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
    ] + [  # quick steps run as local activities: their attempts are in their markers
        m["attempt"] for m in local_activity_markers(history)
    ]
    assert max(attempts) > 1, attempts


async def test_a_routed_replica_that_dies_between_deployments_is_taken_out(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
) -> None:
    """HAProxy's check marks a dead replica DOWN; the others take every request after that."""
    url = await serve_v1(service, project)
    replicas = {c.name: c for c in labelled(docker_client, project)}
    assert routed(router, project) == set(replicas)
    victim = sorted(replicas)[1]
    replicas[victim].kill()
    deadline = time.monotonic() + 15
    while victim in routed(router, project):
        assert time.monotonic() < deadline, "HAProxy still routes to the dead replica after 15 s"
        await asyncio.sleep(0.2)
    assert routed(router, project) == set(replicas) - {victim}
    with Load(url, connections=4, keepalive=False) as load:
        await asyncio.sleep(2)
    assert load.result.failed == 0, load.result.errors
    assert load.result.ok > 50
