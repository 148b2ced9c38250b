"""Projects: store a Compose file, read it back, deploy it, list its deployments."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Path, status
from pydantic import BaseModel, Field

from api.deps import CallerDep, DeployerDep, ServiceDep
from moorage.compose import MAX_COMPOSE_BYTES
from moorage.models import Deployment, DeploymentEvent, DeployRequest, ProjectPublic
from moorage.service import MAX_IDEMPOTENCY_KEY_CHARS

router = APIRouter(prefix="/api/projects", tags=["projects"])

ProjectId = Annotated[str, Path(min_length=1, max_length=40, description="Project id")]


class ProjectCreate(BaseModel):
    """Body of ``PUT /api/projects/{id}``."""

    compose: str = Field(min_length=1, max_length=MAX_COMPOSE_BYTES)
    """The Compose file, as YAML text."""
    variables: dict[str, str] = Field(default_factory=dict, max_length=1000)
    """Values of the ``${VAR}`` the Compose file uses (the server's environment is never read)."""


@router.put("/{project_id}", response_model=ProjectPublic)
async def apply_project(
    project_id: ProjectId, body: ProjectCreate, caller: DeployerDep, svc: ServiceDep
) -> ProjectPublic:
    """Create the project or replace its Compose file (takes effect on the next deploy).

    ``${VAR}`` in the file is substituted from ``variables`` before the file is checked; the
    project stores the result.
    """
    return await svc.apply_project(caller.tenant_id, project_id, body.compose, body.variables)


@router.get("/{project_id}", response_model=ProjectPublic)
async def get_project(project_id: ProjectId, caller: CallerDep, svc: ServiceDep) -> ProjectPublic:
    """The project: its Compose file, services, serving revision and retained revisions."""
    return await svc.get_project(caller.tenant_id, project_id)


@router.post(
    "/{project_id}/deploy", response_model=Deployment, status_code=status.HTTP_202_ACCEPTED
)
async def deploy(
    project_id: ProjectId,
    caller: DeployerDep,
    svc: ServiceDep,
    body: Annotated[DeployRequest | None, Body()] = None,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", max_length=MAX_IDEMPOTENCY_KEY_CHARS)
    ] = None,
) -> Deployment:
    """Start a deployment of the stored Compose file; answers at once (status ``pending``)."""
    return await svc.deploy(
        caller.tenant_id, caller.user_id, project_id, body or DeployRequest(), idempotency_key
    )


@router.get("/{project_id}/deployments", response_model=list[Deployment])
async def list_deployments(
    project_id: ProjectId, caller: CallerDep, svc: ServiceDep
) -> list[Deployment]:
    """The project's deployments, newest first."""
    return await svc.list_deployments(caller.tenant_id, project_id)


@router.post("/{project_id}/reconcile", response_model=list[DeploymentEvent])
async def reconcile(
    project_id: ProjectId, caller: DeployerDep, svc: ServiceDep
) -> list[DeploymentEvent]:
    """Remove the project's containers that no deployment owns; one event per container removed."""
    return await svc.reconcile(caller.tenant_id, caller.user_id, project_id)
