"""Inputs of the activities: one object per call, plain data, safe to import in workflows."""

from __future__ import annotations

from pydantic import BaseModel, Field

from moorage.compose import ServiceSpec


class ContainerSelector(BaseModel):
    """Which Moorage containers an activity acts on (matched by ``moorage.*`` labels)."""

    tenant: str
    project: str
    service: str | None = None
    revision: int | None = None
    """Only this revision's containers (None: every revision)."""
    slots: list[int] | None = None
    """Only these replicas (None: every replica)."""


class NetworkInput(BaseModel):
    """The project network to make sure of."""

    tenant: str
    project: str


class StartServiceInput(BaseModel):
    """Start replicas of one service for one revision."""

    tenant: str
    project: str
    deployment_id: str
    revision: int
    version: str
    service: ServiceSpec
    slots: list[int]
    """Replica numbers to start (0-based)."""


class StopContainersInput(BaseModel):
    """Stop the selected containers, each within the grace period."""

    selector: ContainerSelector
    grace_period_s: float = 10.0


class WaitHealthyInput(BaseModel):
    """Wait until the selected containers are healthy (or running, without a health check)."""

    selector: ContainerSelector
    expected: int = Field(ge=0)
    """How many containers the selector must find."""
    delay_s: float = 0.0
    retries: int = 60
    interval_s: float = 1.0
