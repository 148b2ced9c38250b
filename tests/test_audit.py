"""Every state-changing API call records who made it in the deployment's events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from api.deps import get_service
from api.main import create_app
from moorage import naming
from moorage.models import DeploymentStatus, DeployRequest, EventType
from moorage.service import ConflictError, DeploymentService, NotFoundError
from moorage.settings import Settings, get_settings
from tests.helpers import TENANT, wait_status, wait_terminal

pytestmark = pytest.mark.integration

USERS = ("dora", "eve", "finn", "gus", "hal", "ivy")


def key(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer key-{user}"}


@pytest_asyncio.fixture(loop_scope="session")
async def http(service: DeploymentService, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app()
    keys = ",".join(f"key-{u}={TENANT}/{u}" for u in USERS)
    app.dependency_overrides[get_settings] = lambda: settings.model_copy(update={"api_keys": keys})
    app.dependency_overrides[get_service] = lambda: service
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://moorage"
    ) as client:
        yield client


def web(image: str) -> str:
    return f"services:\n  web:\n    image: {image}\n    ports: ['80']\n"


def by(events: list[dict[str, Any]], event_type: str) -> set[str]:
    """The users recorded on the events of one type."""
    return {e["details"].get("user") for e in events if e["event_type"] == event_type}


async def test_each_state_change_names_its_user(
    http: httpx.AsyncClient, service: DeploymentService, project: str
) -> None:
    async def deploy(user: str, image: str, **config: Any) -> str:
        put = await http.put(
            f"/api/projects/{project}", json={"compose": web(image)}, headers=key(user)
        )
        assert put.status_code == 200, put.text
        resp = await http.post(f"/api/projects/{project}/deploy", json=config, headers=key(user))
        assert resp.status_code == 202, resp.text
        return str(resp.json()["id"])

    async def events(dep_id: str) -> list[dict[str, Any]]:
        await wait_terminal(service, dep_id)
        resp = await http.get(f"/api/deployments/{dep_id}/events", headers=key("dora"))
        assert resp.status_code == 200
        result: list[dict[str, Any]] = resp.json()
        return result

    async def steer(user: str, dep_id: str, action: str, reached: str) -> None:
        await wait_status(service, dep_id, lambda s: reached in s.deployment.message)
        resp = await http.post(f"/api/deployments/{dep_id}/{action}", headers=key(user))
        assert resp.status_code == 200, resp.text

    manual_canary = {
        "strategy": "canary",
        "canary_steps": [{"weight": 50}, {"pause": "manual"}, {"weight": 100}],
    }

    first = await deploy("dora", "moorage-demo:v1")
    assert by(await events(first), "deployment_requested") == {"dora"}

    resumed = await deploy("dora", "moorage-demo:v2", **manual_canary)
    await steer("eve", resumed, "resume", "paused until resumed")
    log = await events(resumed)
    assert by(log, "resumed") == {"eve"}

    promoted = await deploy("dora", "moorage-demo:v3", strategy="blue_green", auto_promote=False)
    await steer("finn", promoted, "promote", "waiting for promotion")
    assert by(await events(promoted), "promoted") == {"finn"}

    aborted = await deploy("dora", "moorage-demo:v1", **manual_canary)
    await steer("ivy", aborted, "abort", "paused until resumed")
    assert by(await events(aborted), "aborted") == {"ivy"}

    cancelled = await deploy("dora", "moorage-demo:v1", strategy="blue_green", auto_promote=False)
    await wait_status(service, cancelled, lambda s: "waiting for promotion" in s.deployment.message)
    resp = await http.post(f"/api/deployments/{cancelled}/cancel", headers=key("gus"))
    assert resp.status_code == 202, resp.text
    assert by(await events(cancelled), "cancel_requested") == {"gus"}

    resp = await http.post(f"/api/deployments/{promoted}/rollback", json={}, headers=key("hal"))
    assert resp.status_code == 202, resp.text
    rollback = resp.json()["id"]
    log = await events(rollback)
    assert by(log, "deployment_requested") == {"hal"}
    assert log[-1]["event_type"] == "deployment_completed"


async def test_a_cancel_right_after_the_deploy_names_its_user(
    service: DeploymentService, project: str
) -> None:
    """A cancel that reaches the project before its deployment's strategy workflow has started
    was passed on as "operator" (or recorded with no user at all)."""
    await service.apply_project(TENANT, project, web("moorage-demo:v1"))
    dep_id = naming.deployment_id(project, 1)

    async def cancel_as_soon_as_it_exists() -> None:
        while True:
            try:
                await service.cancel(TENANT, "eve", dep_id)
                return
            except (NotFoundError, ConflictError):  # not registered yet
                await asyncio.sleep(0)

    canceller = asyncio.create_task(cancel_as_soon_as_it_exists())
    dep = await service.deploy(TENANT, "dora", project, DeployRequest(health_check_delay=2))
    await asyncio.wait_for(canceller, 10)
    assert dep.id == dep_id
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.CANCELLED
    assert "operator" not in state.deployment.message
    cancelled = [e for e in state.events if e.event_type == EventType.DEPLOYMENT_CANCELLED]
    assert cancelled, state.events
    assert {e.details.get("user") for e in cancelled} == {"eve"}
