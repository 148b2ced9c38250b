"""Inputs of the workflows: one object per workflow, plain data."""

from __future__ import annotations

from pydantic import BaseModel, Field

from moorage.compose import ComposePolicy, ProjectSpec
from moorage.models import (
    Deployment,
    DeploymentEvent,
    DeploymentState,
    DeployRequest,
    RevisionInfo,
)


class RevisionRef(BaseModel):
    """A revision a strategy acts on: what it runs and which deployment made it."""

    revision: int
    version: str
    deployment_id: str
    spec: ProjectSpec


class StrategyInput(BaseModel):
    """Input of every strategy workflow."""

    deployment: Deployment
    target: ProjectSpec
    """The spec of the revision being rolled out."""
    previous: RevisionRef | None = None
    """The revision serving when the deployment starts (None on a project's first deployment)."""


class ProjectState(BaseModel):
    """State of a project workflow, carried across continue-as-new."""

    tenant_id: str
    project_id: str
    compose: str | None = None
    next_revision: int = 1
    current: RevisionInfo | None = None
    """The revision serving now."""
    revisions: list[RevisionInfo] = Field(default_factory=list)
    """Successful revisions retained for rollback, oldest first."""
    deployments: list[DeploymentState] = Field(default_factory=list)
    """Deployment records with their events and instances, oldest first (bounded)."""
    active_id: str | None = None
    active_compose: str | None = None
    """The Compose text the active deployment rolls out."""
    routes: dict[str, str] = Field(default_factory=dict)
    """Service → URL on the traffic router."""
    reconcile_log: list[DeploymentEvent] = Field(default_factory=list)
    """Orphans removed by reconciliation (bounded)."""
    idempotency: dict[str, str] = Field(default_factory=dict)
    """Idempotency-Key → deployment id (bounded)."""
    retained_revisions: int = 10


class ApplyInput(BaseModel):
    """Store a project's Compose text."""

    compose: str
    """Already interpolated (``moorage.compose.resolve_compose``)."""
    policy: ComposePolicy | None = None
    """The tenant's Compose policy the text must pass (None: the default policy)."""


class DeployInput(BaseModel):
    """Start a deployment of the project's current Compose text (or of a retained revision)."""

    request: DeployRequest
    user_id: str
    idempotency_key: str | None = None
    policy: ComposePolicy | None = None
    """The tenant's Compose policy now: the stored text must still pass it (None: no check)."""


class RollbackInput(BaseModel):
    """Roll a project back to a retained revision."""

    deployment_id: str
    """The deployment being rolled back."""
    user_id: str
    to_revision: int | None = None
    """Target revision; None: the last successful revision before the one serving."""
    policy: ComposePolicy | None = None
    """The tenant's Compose policy now: the target revision must still pass it (None: no check)."""


class SteerInput(BaseModel):
    """Promote, pause, resume or abort a running deployment."""

    user_id: str


class CancelInput(BaseModel):
    """Cancel the active deployment."""

    deployment_id: str
    user_id: str
