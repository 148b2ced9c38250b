"""Orphan reconciliation: labelled containers nobody owns are found and removed, with events."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import docker
import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.worker import Worker

from activities.docker_executor import DockerExecutor
from activities.inputs import ContainerSelector, RouteServersInput, StartServiceInput
from activities.proxy import route_key
from activities.router import TrafficRouter
from moorage import naming
from moorage.compose import parse_compose
from moorage.models import (
    DeploymentEvent,
    DeploymentStatus,
    DeployRequest,
    EventType,
    ServiceInstance,
)
from moorage.service import ConflictError, DeploymentService
from moorage.settings import Settings
from tests.helpers import TENANT, USER, compose, labelled, wait_terminal
from worker import WORKFLOWS, ensure_reconcile_schedule
from workflows.reconcile import SCHEDULE_ID

pytestmark = pytest.mark.integration


def make_orphan(
    client: docker.DockerClient, project: str, revision: int, tenant: str = TENANT
) -> str:
    """What a crash between 'create' and 'record' leaves: a labelled container no record knows."""
    spec = parse_compose(compose(api_image=None)).service("web")
    made = DockerExecutor(client).start_service(
        StartServiceInput(
            tenant=tenant,
            project=project,
            deployment_id=f"{project}.{revision}",
            revision=revision,
            version="lost",
            service=spec,
            slots=[0],
        )
    )
    return made[0].container_name


async def test_reconcile_removes_orphans_of_a_project(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
) -> None:
    await service.apply_project(TENANT, project, compose(api_image=None))
    dep = await service.deploy(TENANT, USER, project, DeployRequest())
    assert (await wait_terminal(service, dep.id)).deployment.status == DeploymentStatus.COMPLETED
    serving = {c.name for c in labelled(docker_client, project)}
    orphan = make_orphan(docker_client, project, revision=7)
    router.route_add(
        RouteServersInput(tenant=TENANT, project=project, service="web", containers=[orphan])
    )
    assert orphan in router.load().routes[route_key(TENANT, project, "web")].servers

    events = await service.reconcile(TENANT, "ops", project)

    assert [e.event_type for e in events] == [EventType.ORPHAN_REMOVED]
    assert events[0].details["container"] == orphan
    assert events[0].details["by"] == "ops"
    assert {c.name for c in labelled(docker_client, project)} == serving
    assert orphan not in router.load().routes[route_key(TENANT, project, "web")].servers
    # Nothing left to do the second time.
    assert await service.reconcile(TENANT, "ops", project) == []


async def test_reconcile_is_refused_while_a_deployment_runs(
    service: DeploymentService, project: str
) -> None:
    await service.apply_project(TENANT, project, compose(api_image=None))
    dep = await service.deploy(TENANT, USER, project, DeployRequest(health_check_delay=3))
    with pytest.raises(ConflictError):
        await service.reconcile(TENANT, USER, project)
    await wait_terminal(service, dep.id)


# Alone: beside it, the projects of a test process with another Temporal server are unknown here,
# and their containers orphans.
@pytest.mark.exclusive
async def test_reconcile_all_removes_containers_of_unknown_projects(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    # `project` was never applied: no project workflow owns these.
    orphan = make_orphan(docker_client, project, revision=1)
    events = await service.reconcile_all(TENANT)
    mine = [e for e in events if e.details.get("project") == project]
    assert [e.details["container"] for e in mine] == [orphan]
    assert mine[0].event_type == EventType.ORPHAN_REMOVED
    assert labelled(docker_client, project) == []


async def test_the_worker_schedules_reconciliation_once(
    temporal_client: Client, settings: Settings
) -> None:
    with contextlib.suppress(RPCError):  # made by an earlier worker on this server
        await temporal_client.get_schedule_handle(SCHEDULE_ID).delete()
    assert (
        await ensure_reconcile_schedule(
            temporal_client, settings.model_copy(update={"reconcile_every": 0})
        )
        is False
    )
    try:
        assert await ensure_reconcile_schedule(temporal_client, settings) is True
        assert await ensure_reconcile_schedule(temporal_client, settings) is False
        desc = await temporal_client.get_schedule_handle(SCHEDULE_ID).describe()
        assert desc.schedule.spec.intervals[0].every.total_seconds() == settings.reconcile_every
    finally:
        await temporal_client.get_schedule_handle(SCHEDULE_ID).delete()


@activity.defn(name="list_containers")
def engine_down(inp: ContainerSelector) -> list[ServiceInstance]:
    """Stub: the engine does not answer (past the steps' retries)."""
    raise ApplicationError(
        "engine unreachable (stub)", type="EngineUnreachable", non_retryable=True
    )


async def test_a_scheduled_reconcile_that_fails_leaves_the_project_running(
    temporal_client: Client, settings: Settings, project: str
) -> None:
    """The scheduled pass runs in the project's own loop: its failure is logged, and the
    project's workflow (the project itself) lives on."""
    queue = f"reconcile-down-{uuid.uuid4().hex[:6]}"
    svc = DeploymentService(temporal_client, settings.model_copy(update={"task_queue": queue}))
    async with Worker(
        temporal_client,
        task_queue=queue,
        workflows=WORKFLOWS,
        activities=[engine_down],
        activity_executor=ThreadPoolExecutor(2),
    ):
        await svc.apply_project(TENANT, project, compose(api_image=None))
        handle = temporal_client.get_workflow_handle(naming.project_workflow_id(TENANT, project))
        try:
            await handle.signal("reconcile_requested")
            deadline = time.monotonic() + 15
            while not (
                log := await handle.query("reconcile_log", result_type=list[DeploymentEvent])
            ):
                assert time.monotonic() < deadline, "no reconcile logged"
                await asyncio.sleep(0.1)
            assert [e.event_type for e in log] == [EventType.RECONCILE_FAILED]
            assert "engine unreachable (stub)" in log[0].message
            assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
            assert (await svc.get_project(TENANT, project)).id == project
        finally:
            await handle.terminate("test over")
