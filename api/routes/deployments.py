"""Deployments: read their record, status, events and instances; cancel; roll back."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, status
from pydantic import BaseModel, ConfigDict, Field

from api.deps import CallerDep, DeployerDep, ServiceDep
from moorage.models import Deployment, DeploymentEvent, DeploymentStatus, ServiceInstance

router = APIRouter(prefix="/api/deployments", tags=["deployments"])

DeploymentId = Annotated[str, Path(min_length=1, max_length=60, description="Deployment id")]


class DeploymentStatusPublic(BaseModel):
    """The short status of a deployment."""

    id: str
    status: DeploymentStatus
    progress: int
    message: str
    routes: dict[str, str] = {}
    """Where the deployment's services are routed (service → URL); a blue-green's preview
    routes, which reach green only, under ``<service>:preview``."""


class RollbackRequest(BaseModel):
    """Body of ``POST /api/deployments/{id}/rollback`` (optional)."""

    model_config = ConfigDict(extra="forbid")

    to_revision: int | None = Field(default=None, ge=1)
    """The retained revision to bring back; default: the one before the serving revision."""


@router.get("/{deployment_id}", response_model=Deployment)
async def get_deployment(
    deployment_id: DeploymentId, caller: CallerDep, svc: ServiceDep
) -> Deployment:
    """The deployment record."""
    return await svc.get_deployment(caller.tenant_id, deployment_id)


@router.get("/{deployment_id}/status", response_model=DeploymentStatusPublic)
async def get_status(
    deployment_id: DeploymentId, caller: CallerDep, svc: ServiceDep
) -> DeploymentStatusPublic:
    """Status, progress (0-100), message and routes (a blue-green's previews among them)."""
    state = await svc.get_state(caller.tenant_id, deployment_id)
    d = state.deployment
    return DeploymentStatusPublic(
        id=d.id, status=d.status, progress=d.progress, message=d.message, routes=state.routes
    )


@router.get("/{deployment_id}/events", response_model=list[DeploymentEvent])
async def get_events(
    deployment_id: DeploymentId, caller: CallerDep, svc: ServiceDep
) -> list[DeploymentEvent]:
    """The event log, oldest first."""
    return await svc.events(caller.tenant_id, deployment_id)


@router.get("/{deployment_id}/instances", response_model=list[ServiceInstance])
async def get_instances(
    deployment_id: DeploymentId, caller: CallerDep, svc: ServiceDep
) -> list[ServiceInstance]:
    """The containers the deployment made."""
    return await svc.instances(caller.tenant_id, deployment_id)


@router.post(
    "/{deployment_id}/cancel", response_model=Deployment, status_code=status.HTTP_202_ACCEPTED
)
async def cancel(deployment_id: DeploymentId, caller: DeployerDep, svc: ServiceDep) -> Deployment:
    """Cancel a running deployment: it undoes what it did and ends ``cancelled``."""
    return await svc.cancel(caller.tenant_id, caller.user_id, deployment_id)


@router.post(
    "/{deployment_id}/rollback", response_model=Deployment, status_code=status.HTTP_202_ACCEPTED
)
async def rollback(
    deployment_id: DeploymentId,
    caller: DeployerDep,
    svc: ServiceDep,
    body: Annotated[RollbackRequest | None, Body()] = None,
) -> Deployment:
    """Start a deployment that brings back the previous (or the given) successful revision."""
    to = body.to_revision if body else None
    return await svc.rollback(caller.tenant_id, caller.user_id, deployment_id, to)


class SteerResult(BaseModel):
    """What a steering call did."""

    id: str
    action: str
    result: str


async def _steer(
    action: str, deployment_id: str, caller: DeployerDep, svc: ServiceDep
) -> SteerResult:
    result = await svc.steer(caller.tenant_id, caller.user_id, deployment_id, action)
    return SteerResult(id=deployment_id, action=action, result=result)


@router.post("/{deployment_id}/promote", response_model=SteerResult)
async def promote(deployment_id: DeploymentId, caller: DeployerDep, svc: ServiceDep) -> SteerResult:
    """Blue-green: switch to green now. Canary: skip the remaining steps (409: nothing to do)."""
    return await _steer("promote", deployment_id, caller, svc)


@router.post("/{deployment_id}/pause", response_model=SteerResult)
async def pause(deployment_id: DeploymentId, caller: DeployerDep, svc: ServiceDep) -> SteerResult:
    """Canary: hold before the next step. 409 when not in its steps or already paused."""
    return await _steer("pause", deployment_id, caller, svc)


@router.post("/{deployment_id}/resume", response_model=SteerResult)
async def resume(deployment_id: DeploymentId, caller: DeployerDep, svc: ServiceDep) -> SteerResult:
    """Canary: go on (ends a pause step too). 409 when not paused."""
    return await _steer("resume", deployment_id, caller, svc)


@router.post("/{deployment_id}/abort", response_model=SteerResult)
async def abort(deployment_id: DeploymentId, caller: DeployerDep, svc: ServiceDep) -> SteerResult:
    """Canary: traffic back to stable, canary removed, status rolled_back."""
    return await _steer("abort", deployment_id, caller, svc)
