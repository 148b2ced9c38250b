"""Images pulled from a registry: a slow pull, a registry error, an image it does not have.

Every other test deploys images imported on the engine; these deploy one the engine must pull,
from the registry in ``tests/registry.py`` (no registry is reachable from here).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import pytest
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from moorage import naming
from moorage.models import DeploymentStatus, DeployRequest, EventType
from moorage.service import DeploymentService
from tests.helpers import TENANT, USER, labelled, wait_terminal
from tests.registry import Behaviour, Registry

pytestmark = pytest.mark.integration


@pytest.fixture
def image_name(docker_client: docker.DockerClient) -> Iterator[str]:
    """A repository name no other test pulls; its images are removed afterwards."""
    name = f"pulltest/{uuid.uuid4().hex[:10]}"
    yield name
    for image in docker_client.api.images(name=f"*/{name}"):
        for tag in image.get("RepoTags") or []:
            if name in tag:
                docker_client.api.remove_image(tag, force=True)


def compose(image: str) -> str:
    return f"services:\n  web:\n    image: {image}\n    ports: ['80']\n"


async def start_attempts(service: DeploymentService, dep_id: str) -> list[int]:
    """The attempt each ``start_service`` activity of the deployment ended on."""
    history = await service.client.get_workflow_handle(
        naming.deployment_workflow_id(TENANT, dep_id)
    ).fetch_history()
    scheduled = {
        e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    }
    return [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
        and scheduled[e.activity_task_started_event_attributes.scheduled_event_id]
        == "start_service"
    ]


async def start_runs(handle: WorkflowHandle[Any, Any]) -> bool:
    """True while the workflow's ``start_service`` activity runs (False: no workflow yet)."""
    try:
        pending = (await handle.describe()).raw_description.pending_activities
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        return False  # the project's workflow has not started it yet
    return any(
        a.activity_type.name == "start_service"
        and a.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
        for a in pending
    )


async def test_a_pull_longer_than_the_heartbeat_timeout_succeeds_at_its_first_attempt(
    service: DeploymentService, docker_client: docker.DockerClient, project: str, image_name: str
) -> None:
    """The start heartbeated only once the pull was done: a pull over 10 s (the heartbeat
    timeout) timed the attempt out, and the next ones joined the same pull until the retries
    ran out (five: ~65 s)."""
    with Registry("v2", Behaviour(layer_seconds=13)) as registry:
        image = registry.ref(image_name, "v2")
        await service.apply_project(TENANT, project, compose(image))
        dep = await service.deploy(TENANT, USER, project, DeployRequest(version="v2"))
        state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    assert await start_attempts(service, dep.id) == [1]
    [container] = labelled(docker_client, project)
    assert container.status == "running"
    assert container.image.tags == [image]


async def test_a_registry_error_is_retried(
    service: DeploymentService, project: str, image_name: str
) -> None:
    """Every pull failure was final (``ImageNotFound``): a registry answering 500 for a moment
    failed the deployment at once."""
    with Registry("v2", Behaviour(manifest_errors=4)) as registry:  # two pulls fail
        await service.apply_project(TENANT, project, compose(registry.ref(image_name, "v2")))
        dep = await service.deploy(TENANT, USER, project, DeployRequest(version="v2"))
        state = await wait_terminal(service, dep.id)
        assert registry.behaviour.manifest_errors == 0
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    assert await start_attempts(service, dep.id) == [3]


async def test_an_image_the_registry_does_not_have_fails_at_once(
    service: DeploymentService, docker_client: docker.DockerClient, project: str, image_name: str
) -> None:
    with Registry("v2", Behaviour(missing=True)) as registry:
        image = registry.ref(image_name, "nope")
        await service.apply_project(TENANT, project, compose(image))
        dep = await service.deploy(TENANT, USER, project, DeployRequest(version="v2"))
        state = await wait_terminal(service, dep.id)
        asked = registry.behaviour.manifest_requests
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK
    [failed] = [e for e in state.events if e.event_type == EventType.DEPLOYMENT_FAILED]
    assert "manifest unknown" in failed.message
    assert failed.details.get("error_type") == "ImageNotFound"
    assert [r for r in asked if r.startswith("HEAD")] == [f"HEAD /v2/{image_name}/manifests/nope"]
    assert await start_attempts(service, dep.id) == [1]
    assert labelled(docker_client, project) == []


@pytest.mark.parametrize(
    "refusal",
    [
        (403, "DENIED", "requested access to the resource is denied"),
        (401, "UNAUTHORIZED", "authentication required"),
    ],
)
async def test_an_image_the_registry_will_not_give_fails_at_once(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    project: str,
    image_name: str,
    refusal: tuple[int, str, str],
) -> None:
    """A registry that refuses access (no credentials, or not these): no retry gets the image."""
    with Registry("v2", Behaviour(refuse=refusal)) as registry:
        await service.apply_project(TENANT, project, compose(registry.ref(image_name, "v2")))
        dep = await service.deploy(TENANT, USER, project, DeployRequest(version="v2"))
        state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK, state.deployment.message
    [failed] = [e for e in state.events if e.event_type == EventType.DEPLOYMENT_FAILED]
    assert failed.details.get("error_type") == "ImageNotFound", failed.message
    assert await start_attempts(service, dep.id) == [1]
    assert labelled(docker_client, project) == []


async def test_a_progress_deadline_that_stops_a_pull_fails_the_deployment_as_the_deadline(
    service: DeploymentService, docker_client: docker.DockerClient, project: str, image_name: str
) -> None:
    """The deadline stopped the start in its pull: the step ended with the activity's
    cancellation, and the deployment failed with the reason "Activity cancelled" (only a health
    gate stopped by the deadline said so)."""
    with Registry("v2", Behaviour(layer_seconds=13)) as registry:
        await service.apply_project(TENANT, project, compose(registry.ref(image_name, "v2")))
        dep = await service.deploy(
            TENANT, USER, project, DeployRequest(version="v2", progress_deadline=3)
        )
        state = await wait_terminal(service, dep.id, timeout=60)
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK, state.deployment.message
    assert "progress deadline exceeded" in (state.deployment.message or "")
    failed = next(e for e in state.events if e.event_type == EventType.DEPLOYMENT_FAILED)
    assert failed.details["error_type"] == "ProgressDeadlineExceeded"
    assert await start_attempts(service, dep.id) == [1]
    assert labelled(docker_client, project) == []


async def test_a_cancel_of_the_workflow_itself_in_a_pull_undoes_the_deployment(
    service: DeploymentService, docker_client: docker.DockerClient, project: str, image_name: str
) -> None:
    """A cancel from Temporal (its UI, its CLI, or the project's workflow ending) that stops an
    activity undoes the deployment, ``rollback_on_failure`` off or not. (A guard: it passed on
    the code before the abort and deadline fix too.)"""
    with Registry("v2", Behaviour(layer_seconds=13)) as registry:
        await service.apply_project(TENANT, project, compose(registry.ref(image_name, "v2")))
        dep = await service.deploy(
            TENANT, USER, project, DeployRequest(version="v2", rollback_on_failure=False)
        )
        handle = service.client.get_workflow_handle(naming.deployment_workflow_id(TENANT, dep.id))
        # The start runs (its pull takes 13 s). Not its started event in the history: Temporal
        # writes that when the attempt ends, and the cancel then met the health gate or came
        # after the deployment completed (a third of the runs failed so).
        deadline = time.monotonic() + 30
        while not await start_runs(handle):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        await handle.cancel()
        state = await wait_terminal(service, dep.id, timeout=60)
    assert state.deployment.status == DeploymentStatus.CANCELLED, state.deployment.message
    kinds = [e.event_type for e in state.events]
    assert EventType.SERVICE_STARTED not in kinds  # stopped in its pull
    assert EventType.CANCEL_REQUESTED in kinds
    assert EventType.ROLLBACK_COMPLETED in kinds
    assert EventType.DEPLOYMENT_FAILED not in kinds
    assert labelled(docker_client, project) == []
