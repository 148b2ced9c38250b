"""Recreate end to end on a real Temporal dev server and a real Docker engine."""

from __future__ import annotations

import asyncio

import docker
import pytest

from moorage.models import DeploymentStatus, DeployRequest, EventType
from moorage.service import DeploymentService
from tests.helpers import TENANT, USER, compose, labelled, serving_version, wait_terminal

pytestmark = pytest.mark.integration


async def test_recreate_two_services_with_depends_on(service: DeploymentService, docker_client: docker.DockerClient, project: str) -> None:
    await service.apply_project(TENANT, project, compose("moorage-demo:v1", "moorage-demo:v1"))
    first = await service.deploy(TENANT, USER, project, DeployRequest(version="v1"))
    assert first.status == DeploymentStatus.PENDING
    state = await wait_terminal(service, first.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    assert serving_version(docker_client, project, "web") == {"v1"}

    await service.apply_project(TENANT, project, compose("moorage-demo:v2", "moorage-demo:v2"))
    second = await service.deploy(TENANT, USER, project, DeployRequest(version="v2"))

    # Sample progress and the engine while it runs: old and new never run together.
    seen_progress: list[int] = []
    overlap = []
    while True:
        st = await service.get_state(TENANT, second.id)
        seen_progress.append(st.deployment.progress)
        running = {c.labels["moorage.revision"] for c in docker_client.containers.list(filters={"label": f"moorage.project={project}"})}
        if len(running) > 1:
            overlap.append(running)
        if st.deployment.status.terminal:
            break
        await asyncio.sleep(0.05)
    state = await wait_terminal(service, second.id)
    dep = state.deployment
    assert dep.status == DeploymentStatus.COMPLETED, dep.message
    assert dep.progress == 100
    assert overlap == []
    assert seen_progress == sorted(seen_progress)

    types = [e.event_type for e in state.events]
    progress_marks = [e for e in types if e in (EventType.SERVICE_STOPPED, EventType.SERVICE_REMOVED, EventType.SERVICE_STARTED, EventType.HEALTH_CHECK_PASSED, EventType.INSTANCES_RECORDED, EventType.DEPLOYMENT_COMPLETED)]
    # In order: stop (web before api), remove, start (api before web), health, instances, done.
    assert progress_marks[:2] == [EventType.SERVICE_STOPPED, EventType.SERVICE_STOPPED]
    assert progress_marks[2] == EventType.SERVICE_REMOVED
    assert progress_marks[-2:] == [EventType.INSTANCES_RECORDED, EventType.DEPLOYMENT_COMPLETED]
    stopped = [e.service_name for e in state.events if e.event_type == EventType.SERVICE_STOPPED]
    started = [e.service_name for e in state.events if e.event_type == EventType.SERVICE_STARTED]
    assert stopped == ["web", "api"]
    assert started == ["api", "web"]
    assert types[0] == EventType.DEPLOYMENT_REQUESTED
    assert types[1] == EventType.DEPLOYMENT_STARTED

    # Instances match what the engine reports.
    engine = {c.name: c for c in labelled(docker_client, project)}
    assert {i.container_name for i in state.instances} == set(engine)
    assert all(c.labels["moorage.revision"] == str(dep.revision) for c in engine.values())
    assert {i.service_name for i in state.instances} == {"api", "web"}
    assert serving_version(docker_client, project, "web") == {"v2"}
    assert serving_version(docker_client, project, "api") == {"v2"}
