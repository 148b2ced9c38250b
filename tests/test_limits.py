"""Per-tenant limits: how many deployments a tenant may run at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import docker
import httpx
import pytest
from temporalio.client import Client

from api.deps import get_service
from api.main import create_app
from moorage.models import DeploymentStatus, DeployRequest, Strategy
from moorage.service import DeploymentService, LimitError
from moorage.settings import Settings, get_settings
from tests.conftest import remove_labelled
from tests.helpers import compose, wait_status, wait_terminal

pytestmark = pytest.mark.integration

MANUAL = DeployRequest(strategy=Strategy.BLUE_GREEN, auto_promote=False)


@pytest.fixture
def tenant() -> str:
    return f"lim{uuid.uuid4().hex[:8]}"


@pytest.fixture
def projects(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    names = [f"t{uuid.uuid4().hex[:10]}" for _ in range(3)]
    yield names
    for name in names:
        remove_labelled(docker_client, name)


@pytest.fixture
def limited(temporal_client: Client, settings: Settings, worker: None) -> DeploymentService:
    return DeploymentService(
        temporal_client, settings.model_copy(update={"max_active_deployments": 1})
    )


async def waiting_for_promotion(service: DeploymentService, tenant: str, dep_id: str) -> None:
    await wait_status(
        service, dep_id, lambda s: "waiting for promotion" in s.deployment.message, tenant=tenant
    )


async def test_a_tenant_at_its_limit_gets_429_until_a_deployment_ends(
    limited: DeploymentService, settings: Settings, tenant: str, projects: list[str]
) -> None:
    a, b, _ = projects
    for p in (a, b):
        await limited.apply_project(tenant, p, compose(api_image=None))
    first = await limited.deploy(tenant, "alice", a, MANUAL, idempotency_key="k1")
    await waiting_for_promotion(limited, tenant, first.id)
    assert await limited.active_deployments(tenant) == 1

    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings.model_copy(
        update={"api_keys": f"key-l={tenant}/alice"}
    )
    app.dependency_overrides[get_service] = lambda: limited
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://moorage"
    ) as http:
        resp = await http.post(
            f"/api/projects/{b}/deploy", json={}, headers={"Authorization": "Bearer key-l"}
        )
    assert resp.status_code == 429, resp.text
    assert "MOORAGE_MAX_ACTIVE_DEPLOYMENTS" in resp.json()["detail"]
    assert await limited.list_deployments(tenant, b) == []  # refused: nothing registered

    # The same request again (same Idempotency-Key) gets its deployment, limit or not.
    again = await limited.deploy(tenant, "alice", a, MANUAL, idempotency_key="k1")
    assert again.id == first.id

    # Another tenant is not held up by this one.
    other = f"{tenant}x"
    await limited.apply_project(other, b, compose(api_image=None))
    elsewhere = await limited.deploy(other, "bob", b, DeployRequest())
    assert (await wait_terminal(limited, elsewhere.id, tenant=other)).deployment.status == (
        DeploymentStatus.COMPLETED
    )

    await limited.steer(tenant, "alice", first.id, "promote")
    assert (await wait_terminal(limited, first.id, tenant=tenant)).deployment.status == (
        DeploymentStatus.COMPLETED
    )
    second = await limited.deploy(tenant, "alice", b, DeployRequest())
    assert (await wait_terminal(limited, second.id, tenant=tenant)).deployment.status == (
        DeploymentStatus.COMPLETED
    )


async def test_simultaneous_deploys_at_the_limit_admit_exactly_one(
    limited: DeploymentService, tenant: str, projects: list[str]
) -> None:
    for p in projects:
        await limited.apply_project(tenant, p, compose(api_image=None))
    results = await asyncio.gather(
        *(limited.deploy(tenant, "alice", p, MANUAL) for p in projects), return_exceptions=True
    )
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, LimitError)]
    assert len(admitted) == 1, results
    assert len(refused) == 2, results
    dep = admitted[0]
    await waiting_for_promotion(limited, tenant, dep.id)
    await limited.cancel(tenant, "alice", dep.id)
    state = await wait_terminal(limited, dep.id, tenant=tenant)
    assert state.deployment.status == DeploymentStatus.CANCELLED


async def test_a_rollback_counts_against_the_limit_too(
    limited: DeploymentService, tenant: str, projects: list[str]
) -> None:
    a, b, _ = projects
    for image in ("moorage-demo:v1", "moorage-demo:v2"):
        await limited.apply_project(tenant, a, compose(image, api_image=None))
        dep = await limited.deploy(tenant, "alice", a, DeployRequest())
        assert (await wait_terminal(limited, dep.id, tenant=tenant)).deployment.status == (
            DeploymentStatus.COMPLETED
        )
    await limited.apply_project(tenant, b, compose(api_image=None))
    holding = await limited.deploy(tenant, "alice", b, MANUAL)
    await waiting_for_promotion(limited, tenant, holding.id)

    with pytest.raises(LimitError, match="MOORAGE_MAX_ACTIVE_DEPLOYMENTS"):
        await limited.rollback(tenant, "alice", dep.id)
    assert len(await limited.list_deployments(tenant, a)) == 2  # nothing registered

    await limited.cancel(tenant, "alice", holding.id)
    await wait_terminal(limited, holding.id, tenant=tenant)
    back = await limited.rollback(tenant, "alice", dep.id)
    state = await wait_terminal(limited, back.id, tenant=tenant)
    assert state.deployment.status == DeploymentStatus.COMPLETED
    assert state.deployment.rollback_version == "r1"
