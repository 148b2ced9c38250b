"""Pydantic models shared by the API, the CLI, the workflows and the activities.

These models cross the Temporal boundary (workflow and activity inputs, query results), so they
must stay plain data: no I/O, no clock, nothing that breaks workflow determinism.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,39}\Z")
r"""Project and tenant ids: lowercase, digits and dashes, so they fit Docker names. ``\Z``, not
``$``: ``$`` matches before a trailing newline, and ``"shop\n"`` passed as a project id."""

_PERCENT_RE = re.compile(r"^(\d{1,3})%$")


class Strategy(StrEnum):
    """How a new revision replaces the old one."""

    RECREATE = "recreate"
    ROLLING_UPDATE = "rolling_update"
    BLUE_GREEN = "blue_green"
    CANARY = "canary"


class DeploymentStatus(StrEnum):
    """The status machine of one deployment."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True once the deployment can no longer change."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {
        DeploymentStatus.COMPLETED,
        DeploymentStatus.FAILED,
        DeploymentStatus.ROLLED_BACK,
        DeploymentStatus.CANCELLED,
    }
)


class EventType(StrEnum):
    """Event types of the deployment log."""

    DEPLOYMENT_REQUESTED = "deployment_requested"
    DEPLOYMENT_STARTED = "deployment_started"
    SERVICE_STOPPING = "service_stopping"
    SERVICE_STOPPED = "service_stopped"
    SERVICE_REMOVED = "service_removed"
    SERVICE_STARTING = "service_starting"
    SERVICE_STARTED = "service_started"
    SERVICE_UPDATING = "service_updating"
    SERVICE_UPDATED = "service_updated"
    HEALTH_CHECK_PASSED = "health_check_passed"
    HEALTH_CHECK_FAILED = "health_check_failed"
    INSTANCES_RECORDED = "instances_recorded"
    DEPLOYMENT_COMPLETED = "deployment_completed"
    DEPLOYMENT_FAILED = "deployment_failed"
    CANCEL_REQUESTED = "cancel_requested"
    DEPLOYMENT_CANCELLED = "deployment_cancelled"
    ROLLBACK_STARTED = "rollback_started"
    ROLLBACK_STEP = "rollback_step"
    ROLLBACK_COMPLETED = "rollback_completed"
    ROLLBACK_FAILED = "rollback_failed"
    ORPHAN_REMOVED = "orphan_removed"
    RECONCILE_FAILED = "reconcile_failed"
    ROUTE_DELETED = "route_deleted"
    ROUTE_DELETE_FAILED = "route_delete_failed"
    GREEN_DEPLOYMENT_STARTED = "green_deployment_started"
    TRAFFIC_SWITCHED = "traffic_switched"
    PROMOTED = "promoted"
    PAUSED = "paused"
    RESUMED = "resumed"
    ABORTED = "aborted"


def parse_surge(value: object, field: str) -> int | str:
    """Validate a max_surge / max_unavailable value: a non-negative integer or ``"N%"``.

    Raises:
        ValueError: the value is negative or not of either form.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{field} must be an integer or a percentage like '25%'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{field} must not be negative")
        return value
    match = _PERCENT_RE.match(value.strip())
    if not match:
        raise ValueError(f"{field} must be an integer or a percentage like '25%', not {value!r}")
    # As Kubernetes: a surge may be more than 100% (all new replicas at once, at most), an
    # unavailability may not (there is nothing beyond all of them).
    if field == "max_unavailable" and int(match.group(1)) > 100:
        raise ValueError(f"{field} must be at most 100%")
    return f"{int(match.group(1))}%"


def is_zero(value: int | str) -> bool:
    """True when a surge value resolves to zero for every replica count."""
    return value == 0 or value == "0%"


class CanaryStep(BaseModel):
    """One canary step: a traffic weight, or a pause (seconds, or ``"manual"``)."""

    model_config = ConfigDict(extra="forbid")

    weight: int | None = Field(default=None, ge=0, le=100)
    """Percent of requests the canary gets from this step on."""
    pause: float | Literal["manual"] | None = None
    """Seconds to hold (``resume``/``promote`` end it early), or ``"manual"`` (until resumed)."""

    @model_validator(mode="after")
    def _one_of(self) -> CanaryStep:
        if (self.weight is None) == (self.pause is None):
            raise ValueError("a canary step is either {weight: N} or {pause: seconds|'manual'}")
        if isinstance(self.pause, float | int) and not 0 <= self.pause <= 86_400:
            raise ValueError("pause must be 0 to 86400 seconds")
        return self


MIN_HEALTH_CHECK_INTERVAL_S = 0.01
"""Shortest ``health_check_interval`` a new deployment may ask (as an ``x-moorage`` probe's).

Checked when a deployment is requested (:meth:`DeploymentService.deploy`), not by the model: a
deployment's config is part of its workflow's history, which must keep decoding."""


class DeploymentConfig(BaseModel):
    """How to carry out one deployment."""

    model_config = ConfigDict(extra="forbid")

    strategy: Strategy = Strategy.RECREATE
    max_surge: int | str = 1
    """Replicas started above the desired count during a rolling update (integer or ``"N%"``)."""
    max_unavailable: int | str = 0
    """Replicas allowed below the desired count during a rolling update (integer or ``"N%"``)."""
    health_check_delay: float = Field(default=0.0, ge=0, le=3600)
    """Seconds to wait after a container starts before its health is first checked."""
    health_check_retries: int = Field(default=60, ge=1, le=10_000)
    """A replica has this many ``health_check_interval``s to get ready (checked that often, or as
    often as its probe asks)."""
    health_check_interval: float = Field(default=1.0, gt=0, le=600)
    """Seconds between two health checks."""
    rollback_on_failure: bool = True
    """Bring the previous revision back when the deployment fails."""
    blue_green_timeout: int = Field(default=300, ge=0, le=86_400)
    """Seconds a blue-green deployment waits for promotion before it aborts."""
    auto_promote: bool = True
    """Blue-green: switch traffic as soon as green is healthy (else wait for ``promote``)."""
    scale_down_delay: float = Field(default=0, ge=0, le=86_400)
    """Blue-green: seconds blue is kept (stopped last) after the switch."""
    post_switch_verify: float = Field(default=3, ge=0, le=3600)
    """Blue-green: seconds green must stay healthy after the switch, else traffic goes to blue."""
    canary_steps: list[CanaryStep] | None = Field(default=None, max_length=50)
    """Canary: the steps (default: 10%, pause 30 s, 50%, 100%)."""
    progress_deadline: float = Field(default=900, ge=1, le=86_400)
    """Seconds a deployment may go without progress (no step done, no event), as Kubernetes'
    ``progressDeadlineSeconds``; past it, it fails (and rolls back). Pauses, a wait for
    promotion and a scale-down delay do not count."""

    @field_validator("max_surge", "max_unavailable", mode="before")
    @classmethod
    def _surge(cls, value: object, info: Any) -> int | str:
        return parse_surge(value, info.field_name)

    @model_validator(mode="after")
    def _not_both_zero(self) -> DeploymentConfig:
        if is_zero(self.max_surge) and is_zero(self.max_unavailable):
            raise ValueError(
                "max_surge and max_unavailable are both 0: a rolling update could never proceed"
            )
        return self


class DeployRequest(DeploymentConfig):
    """Body of ``POST /api/projects/{id}/deploy``: a config plus an optional version label."""

    version: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[\w.+-]+$")
    """A label for the new revision (e.g. ``v2``); defaults to ``r<revision number>``."""


class Deployment(BaseModel):
    """The record of one deployment."""

    id: str
    """``<project>.<revision>``: unique within a tenant."""
    project_id: str
    version: str
    revision: int
    """The project revision this deployment rolls out (1, 2, …)."""
    strategy: Strategy
    status: DeploymentStatus = DeploymentStatus.PENDING
    progress: int = Field(default=0, ge=0, le=100)
    message: str = ""
    started_at: datetime | None = None
    completed_at: datetime | None = None
    rollback_version: str | None = None
    """The version this deployment rolls back to, when it is a rollback."""
    previous_revision: int | None = None
    """The revision that was serving when this deployment started."""
    user_id: str
    tenant_id: str
    config: DeploymentConfig = Field(default_factory=DeploymentConfig)


class ServiceInstance(BaseModel):
    """One container a deployment made."""

    container_id: str
    container_name: str
    service_name: str
    revision: int
    slot: int
    image: str
    status: str
    """Docker's container state (``running``, ``exited``, …)."""
    health: str | None = None
    """Docker's health status when the container has a health check."""
    ports: dict[str, str] = Field(default_factory=dict)
    """Container port (``80/tcp``) → host address (``127.0.0.1:49153``)."""
    deployment_id: str | None = None


class RouteInfo(BaseModel):
    """Where the traffic router serves a service."""

    service: str
    url: str
    port: int
    moved_from: int | None = None
    """The listen port the route had before this call moved it (a changed ``published`` port)."""


class DeploymentEvent(BaseModel):
    """One entry of a deployment's event log."""

    event_type: EventType
    service_name: str | None = None
    message: str
    details: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime


class DeploymentState(BaseModel):
    """Everything known about a deployment: the record, its events and its instances."""

    deployment: Deployment
    events: list[DeploymentEvent] = Field(default_factory=list)
    instances: list[ServiceInstance] = Field(default_factory=list)
    routes: dict[str, str] = Field(default_factory=dict)
    """Service → URL on the traffic router, for the services this deployment routes."""


class RevisionInfo(BaseModel):
    """A retained revision of a project."""

    revision: int
    version: str
    deployment_id: str
    status: DeploymentStatus
    compose: str
    """The Compose text this revision was deployed from."""
    created_at: datetime


class ProjectPublic(BaseModel):
    """A project as clients see it."""

    id: str
    tenant_id: str
    compose: str | None
    """The Compose text the next deployment will roll out."""
    services: list[str]
    current_revision: int | None = None
    """The revision serving now (None before the first successful deployment)."""
    current_version: str | None = None
    active_deployment_id: str | None = None
    routes: dict[str, str] = Field(default_factory=dict)
    """Service → URL where the traffic router serves it."""
    revisions: list[RevisionInfo] = Field(default_factory=list)


def other_request(known: Deployment, request: DeployRequest) -> bool:
    """Whether ``request`` asks for another deployment than ``known`` (its config or version)."""
    asked = DeploymentConfig.model_validate(request.model_dump(exclude={"version"}))
    return asked != known.config or request.version not in (None, known.version)


def reused_key_message(key: str, known: Deployment) -> str:
    """The refusal of another request under the ``Idempotency-Key`` of ``known``."""
    return (
        f"Idempotency-Key {key!r} was used by deployment {known.id} for another request "
        "(its version or config differ): a new request needs a new key"
    )
