"""Deployment history outlives Temporal's retention of the strategy workflow.

A namespace with a 2 s retention (the test server allows it) deletes a closed strategy workflow
seconds after it ends; the deployment's record, events and instances must still be served, from
the project workflow that carries them across continue-as-new.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import docker
import httpx
import pytest
import pytest_asyncio
from google.protobuf.duration_pb2 import Duration
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode

from activities.docker_executor import DockerExecutor
from activities.router import TrafficRouter
from api.deps import get_service
from api.main import create_app
from moorage import naming
from moorage.models import DeployRequest
from moorage.service import DeploymentService
from moorage.settings import Settings, get_settings
from tests.helpers import TENANT, USER, compose, wait_terminal
from worker import build_worker
from workflows import search_attributes as sa

pytestmark = pytest.mark.integration

QUEUE = "moorage-test-retention"
RETENTION_S = 2


@pytest_asyncio.fixture(loop_scope="session")
async def short_client(temporal_client: Client) -> Client:
    """A client on a fresh namespace whose closed workflows live 2 s."""
    namespace = f"short-{uuid.uuid4().hex[:8]}"
    request = RegisterNamespaceRequest(
        namespace=namespace, workflow_execution_retention_period=Duration(seconds=RETENTION_S)
    )
    for attempt in range(1, 4):
        try:
            await temporal_client.workflow_service.register_namespace(request)
            break
        except RPCError as err:
            # A busy dev server has cancelled the call once (in CI, on a slow day); the
            # namespace may exist by then.
            if err.status == RPCStatusCode.ALREADY_EXISTS:
                break
            if err.status not in (RPCStatusCode.CANCELLED, RPCStatusCode.DEADLINE_EXCEEDED):
                raise
            if attempt == 3:
                raise
            await asyncio.sleep(1)
    await temporal_client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=namespace,
            search_attributes={
                key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for key in sa.ALL
            },
        )
    )
    target = temporal_client.service_client.config.target_host
    deadline = time.monotonic() + 30
    while True:  # a new namespace takes a moment to reach every service of the server
        try:
            client = await Client.connect(
                target, namespace=namespace, data_converter=pydantic_data_converter
            )
            await client.count_workflows()
            return client
        except RPCError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


@pytest_asyncio.fixture(loop_scope="session")
async def short_service(
    short_client: Client, docker_client: docker.DockerClient, router: TrafficRouter
) -> AsyncIterator[DeploymentService]:
    async with build_worker(short_client, QUEUE, DockerExecutor(docker_client), router):
        yield DeploymentService(short_client, Settings(task_queue=QUEUE, api_keys=""))


async def test_events_outlive_the_strategy_workflow(
    short_service: DeploymentService, short_client: Client, project: str
) -> None:
    await short_service.apply_project(TENANT, project, compose(api_image=None))
    dep = await short_service.deploy(TENANT, USER, project, DeployRequest(version="v1"))
    done = await wait_terminal(short_service, dep.id)
    assert done.deployment.status.value == "completed"
    events_before = [e.model_dump(mode="json") for e in done.events]
    instances_before = [i.model_dump(mode="json") for i in done.instances]
    assert len(events_before) >= 4

    # Wait until the server has deleted the strategy workflow's history.
    handle = short_client.get_workflow_handle(naming.deployment_workflow_id(TENANT, dep.id))
    seen = False
    deadline = time.monotonic() + 60
    while True:
        try:
            await handle.describe()
            seen = True
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            break
        assert time.monotonic() < deadline, "the strategy workflow was not deleted within 60 s"
        await asyncio.sleep(1)

    assert seen, "the strategy workflow should have existed before retention deleted it"

    app = create_app()
    app.dependency_overrides[get_settings] = lambda: Settings(
        task_queue=QUEUE, api_keys=f"key-r={TENANT}/{USER}"
    )
    app.dependency_overrides[get_service] = lambda: short_service
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://moorage"
    ) as http:
        auth = {"Authorization": "Bearer key-r"}
        events = await http.get(f"/api/deployments/{dep.id}/events", headers=auth)
        record = await http.get(f"/api/deployments/{dep.id}", headers=auth)
        instances = await http.get(f"/api/deployments/{dep.id}/instances", headers=auth)
    assert events.status_code == 200, events.text
    assert events.json() == events_before
    assert record.status_code == 200
    assert record.json()["status"] == "completed"
    assert instances.status_code == 200
    assert instances.json() == instances_before
    types = {e["event_type"] for e in events.json()}
    assert types >= {"deployment_started", "deployment_completed"}
