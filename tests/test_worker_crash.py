"""A worker killed (SIGKILL) or stopped (SIGTERM) mid-deployment, or restarted: a new worker
finishes the job, no duplicates."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import uuid
from pathlib import Path

import docker
import pytest
from temporalio.api.enums.v1 import EventType as HistoryEventType
from temporalio.client import Client

from activities.haproxy import HAProxyBackend
from moorage import naming
from moorage.models import DeploymentStatus, DeployRequest, EventType
from moorage.service import DeploymentService
from moorage.settings import Settings
from tests.helpers import (
    TENANT,
    USER,
    compose,
    deploy_to_end,
    get_version,
    labelled,
    serving_version,
    wait_status,
    wait_terminal,
    worker_port_setting,
)

ROUTE_PORTS = worker_port_setting(22000, 22999)
"""The listen ports of the routers of the workers these tests start and kill."""

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


async def start_worker(
    address: str,
    queue: str,
    router_dir: Path,
    docker_host: str | None = None,
    said: list[str] | None = None,
) -> asyncio.subprocess.Process:
    """``worker.py`` in a process of its own; ``docker_host``: its engine (default: the tests').

    ``said`` gets its first line (stdout and stderr). One that does not start is killed.
    """
    env = {
        **os.environ,
        "MOORAGE_TEMPORAL_ADDRESS": address,
        "MOORAGE_TASK_QUEUE": queue,
        "MOORAGE_ROUTER_DIR": str(router_dir),
        "MOORAGE_ROUTE_PORTS": ROUTE_PORTS,
        # No ReconcileAll schedule from throwaway workers on the shared test server.
        "MOORAGE_RECONCILE_EVERY": "0",
    }
    if docker_host is not None:
        env["DOCKER_HOST"] = docker_host
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "worker.py"),
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert b"moorage worker" in line, line
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    if said is not None:
        said.append(line.decode())
    return proc


@pytest.mark.parametrize(
    ("phase", "how"),
    [("starting", signal.SIGKILL), ("health", signal.SIGKILL), ("health", signal.SIGTERM)],
    ids=["starting", "health", "health-sigterm"],
)
async def test_worker_killed_or_stopped_mid_deployment(
    temporal_client: Client,
    docker_client: docker.DockerClient,
    project: str,
    phase: str,
    how: signal.Signals,
    tmp_path: Path,
) -> None:
    """Killed, or told to stop (SIGTERM: its health wait is cancelled after the graceful 5 s,
    and retried on the next worker)."""
    queue = f"moorage-kill-{uuid.uuid4().hex[:8]}"
    router_dir = tmp_path / "router"
    service = DeploymentService(temporal_client, Settings(task_queue=queue))
    address = temporal_client.service_client.config.target_host
    worker = await start_worker(address, queue, router_dir)
    try:
        await service.apply_project(
            TENANT, project, compose("moorage-demo:v1", "moorage-demo:v1", web_replicas=3)
        )
        dep = await service.deploy(
            TENANT,
            USER,
            project,
            # Stopped, the worker lets a step finish for 5 s: a health wait longer than that is
            # cancelled and retried on the next worker.
            DeployRequest(version="v1", health_check_delay=8 if how == signal.SIGTERM else 3),
        )
        if phase == "starting":
            await wait_status(
                service,
                dep.id,
                lambda s: any(e.event_type == EventType.SERVICE_STARTING for e in s.events),
            )
        else:
            await wait_status(
                service,
                dep.id,
                lambda s: any(e.event_type == EventType.SERVICE_STARTED for e in s.events),
            )
        worker.send_signal(how)
        assert await worker.wait() == (0 if how == signal.SIGTERM else -signal.SIGKILL)
        await asyncio.sleep(1)
        worker = await start_worker(address, queue, router_dir)
        state = await wait_terminal(service, dep.id, timeout=120)
    finally:
        if worker.returncode is None:
            worker.terminate()
            await worker.wait()
        HAProxyBackend(router_dir).stop()
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    containers = labelled(docker_client, project)
    names = sorted(c.name for c in containers)
    assert len(names) == 4, names  # 1 api + 3 web: no duplicates from the retried steps
    assert sorted(c.labels["moorage.service"] for c in containers) == ["api", "web", "web", "web"]
    assert {
        c.labels["moorage.slot"] for c in containers if c.labels["moorage.service"] == "web"
    } == {"0", "1", "2"}
    assert all(c.status == "running" for c in containers)
    assert serving_version(docker_client, project, "web") == {"v1"}
    assert {i.container_name for i in state.instances} == set(names)
    if how == signal.SIGTERM:
        # The step the shutdown cancelled failed as the worker's shutdown, and its retry on the
        # next worker passed.
        history = await temporal_client.get_workflow_handle(
            naming.deployment_workflow_id(TENANT, dep.id)
        ).fetch_history()
        retried = [
            e.activity_task_started_event_attributes.last_failure.application_failure_info.type
            for e in history.events
            if e.HasField("activity_task_started_event_attributes")
            and e.activity_task_started_event_attributes.attempt > 1
        ]
        assert retried == ["WorkerShutdown"], retried


async def test_first_deploy_after_a_worker_restart_is_accepted(
    temporal_client: Client, docker_client: docker.DockerClient, project: str, tmp_path: Path
) -> None:
    """A new worker replays the project workflow; its first update must see the finished deployment
    as finished (the replay may hand the update over together with the child's completion)."""
    queue = f"moorage-restart-{uuid.uuid4().hex[:8]}"
    router_dir = tmp_path / "router"
    service = DeploymentService(temporal_client, Settings(task_queue=queue))
    address = temporal_client.service_client.config.target_host
    worker = await start_worker(address, queue, router_dir)
    try:
        first = (
            await deploy_to_end(
                service,
                project,
                compose("moorage-demo:v1", api_image=None),
                DeployRequest(version="v1"),
            )
        ).deployment
        worker.terminate()
        assert worker.stdout is not None
        said = (await worker.stdout.read()).decode()
        assert await worker.wait() == 0, said  # SIGTERM: a graceful shutdown
        assert "SIGTERM: shutting down" in said
        assert "moorage worker: stopped" in said
        worker = await start_worker(address, queue, router_dir)
        second = await service.deploy(TENANT, USER, project, DeployRequest(version="v1b"))
        assert second.id != first.id
        state = await wait_terminal(service, second.id)
        assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
        # The shutdown told the server the worker was gone: the project's next workflow task went
        # to the new worker at once, not to the old worker's sticky queue until it timed out.
        handle = temporal_client.get_workflow_handle(naming.project_workflow_id(TENANT, project))
        timed_out = [
            e
            async for e in handle.fetch_history_events()
            if e.event_type == HistoryEventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT
        ]
        assert timed_out == []
    finally:
        if worker.returncode is None:
            worker.terminate()
            await worker.wait()
        HAProxyBackend(router_dir).stop()


async def test_a_worker_whose_router_cannot_start_runs_and_the_router_comes_up_once_it_can(
    temporal_client: Client, docker_client: docker.DockerClient, project: str, tmp_path: Path
) -> None:
    """HAProxy down, and a route's port taken by another process (a reboot: something bound it
    first): the worker ended at its start with a traceback, and no step of any project ran.
    Then HAProxy did not start at all until the port was free; now it starts without that route
    (the worker says so), and the first router change once the port is free brings it back."""
    queue = f"moorage-router-{uuid.uuid4().hex[:8]}"
    router_dir = tmp_path / "router"
    service = DeploymentService(temporal_client, Settings(task_queue=queue))
    address = temporal_client.service_client.config.target_host
    worker = await start_worker(address, queue, router_dir)
    holder = socket.socket()
    try:
        await deploy_to_end(
            service,
            project,
            compose("moorage-demo:v1", api_image=None),
            DeployRequest(version="v1"),
        )
        url = (await service.get_project(TENANT, project)).routes["web"]
        worker.terminate()
        assert await worker.wait() == 0
        HAProxyBackend(router_dir).stop()
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", int(url.rsplit(":", 1)[1].strip("/"))))
        holder.listen()
        first_line: list[str] = []
        worker = await start_worker(address, queue, router_dir, said=first_line)
        assert (
            f"haproxy serves without the routes {TENANT}/{project}/web: their ports are taken"
            in first_line[0]
        ), first_line
        assert worker.stdout is not None
        said = (await asyncio.wait_for(worker.stdout.readline(), 30)).decode()
        assert f"task queue {queue!r}" in said, said
        await asyncio.sleep(1)
        assert worker.returncode is None
        holder.close()  # the port is free again: the next router step starts HAProxy
        second = await service.deploy(TENANT, USER, project, DeployRequest(version="v1b"))
        state = await wait_terminal(service, second.id)
        assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
        assert await asyncio.to_thread(get_version, url) == "v1"
    finally:
        holder.close()
        if worker.returncode is None:
            worker.terminate()
            await worker.wait()
        HAProxyBackend(router_dir).stop()
