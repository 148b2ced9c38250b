"""x-moorage probes (HTTP, TCP), min_ready_seconds and the progress deadline, on the real parts."""

from __future__ import annotations

import docker
import pytest

from moorage.models import DeploymentStatus, DeployRequest, EventType, Strategy
from moorage.service import DeploymentService
from tests.helpers import TENANT, USER, labelled, wait_terminal

pytestmark = pytest.mark.integration


def probed(probe: str = "", extra: str = "", image: str = "moorage-demo:v1") -> str:
    text = f"services:\n  web:\n    image: {image}\n    ports: ['80']\n"
    text += "    deploy:\n      replicas: 2\n"
    if probe or extra:
        text += "    x-moorage:\n"
    if probe:
        text += f"      probe: {probe}\n"
    if extra:
        text += f"      {extra}\n"
    return text


ROLL = DeployRequest(
    strategy=Strategy.ROLLING_UPDATE, health_check_retries=8, health_check_interval=0.5
)


@pytest.mark.parametrize(
    "probe",
    ["{type: http, path: /version, status: 200}", "{type: tcp, port: 80}"],
)
async def test_probe_that_passes(service: DeploymentService, project: str, probe: str) -> None:
    await service.apply_project(TENANT, project, probed(probe))
    dep = await service.deploy(TENANT, USER, project, ROLL)
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message


async def test_http_probe_with_the_wrong_status_never_passes(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    await service.apply_project(
        TENANT, project, probed("{type: http, path: /missing, status: 200}")
    )
    dep = await service.deploy(TENANT, USER, project, ROLL)
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK
    failed = next(e for e in state.events if e.event_type == EventType.HEALTH_CHECK_FAILED)
    assert "GET /missing: status 404, expected 200" in failed.message
    assert labelled(docker_client, project) == []


async def test_min_ready_seconds_holds_the_gate(service: DeploymentService, project: str) -> None:
    await service.apply_project(
        TENANT, project, probed("{type: http, path: /}", "min_ready_seconds: 3s")
    )
    dep = await service.deploy(
        TENANT, USER, project, ROLL.model_copy(update={"health_check_retries": 4})
    )
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    started = [e.created_at for e in state.events if e.event_type == EventType.SERVICE_STARTED]
    passed = [e.created_at for e in state.events if e.event_type == EventType.HEALTH_CHECK_PASSED]
    assert len(started) == len(passed) >= 1
    for s, p in zip(started, passed, strict=True):
        assert (p - s).total_seconds() >= 3


async def test_progress_deadline_fails_and_rolls_back(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    await service.apply_project(TENANT, project, probed())
    dep = await service.deploy(
        TENANT,
        USER,
        project,
        ROLL.model_copy(update={"health_check_delay": 60, "progress_deadline": 3}),
    )
    state = await wait_terminal(service, dep.id, timeout=60)
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK, state.deployment.message
    assert "progress deadline exceeded" in state.deployment.message
    failed = next(e for e in state.events if e.event_type == EventType.DEPLOYMENT_FAILED)
    assert failed.details["error_type"] == "ProgressDeadlineExceeded"
    assert labelled(docker_client, project) == []
