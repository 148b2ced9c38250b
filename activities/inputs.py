"""Inputs of the activities: one object per call, plain data, safe to import in workflows."""

from __future__ import annotations

from pydantic import BaseModel, Field

from moorage.compose import ProbeSpec, ServiceSpec
from moorage.compose.models import RouteMode
from moorage.models import ServiceInstance


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
    """The project network to make sure of, at a deployment's first step.

    With ``revision``, ``replicas`` and ``volumes`` (a deployment's first step; a service's start
    gives none), the step also refuses a name the deployment would make that another project
    or Moorage instance already holds, before anything changes.
    """

    tenant: str
    project: str
    revision: int | None = None
    """The revision the deployment starts (its replicas' names hold it)."""
    replicas: dict[str, int] = Field(default_factory=dict)
    """Service → replicas of that revision."""
    volumes: list[str] = Field(default_factory=list)
    """The project's named volumes its services mount (Compose names)."""


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
    signalled: bool = False
    """A brief stop sent the stop signal already: wait out the grace period, then kill. The
    container is not signalled twice (many programs take a second SIGTERM as "quit now")."""
    budget_s: float | None = Field(default=None, ge=0)
    """``stop_containers_briefly`` only: give up waiting after this long, stopped or not."""

    def briefly(self, budget_s: float) -> StopContainersInput:
        """The brief stop's input: it waits ``budget_s`` at most, and never past the grace."""
        return self.model_copy(update={"budget_s": max(0.0, min(budget_s, self.grace_period_s))})

    def after(self, brief: StopWait) -> StopContainersInput:
        """The full stop's input after ``brief``: the rest of the grace period, no second signal."""
        rest = max(0.0, self.grace_period_s - brief.elapsed_s)
        return self.model_copy(update={"grace_period_s": rest, "signalled": True})


class StopWait(BaseModel):
    """What a brief stop found within its budget."""

    stopped: list[str]
    """The containers that were running and have exited."""
    running: list[str]
    """The containers still running when the budget ran out (signalled, not killed)."""
    elapsed_s: float = Field(ge=0)
    """How long after the signal it gave up: the full stop has the rest of the grace period."""


class WaitHealthyInput(BaseModel):
    """Wait until the selected containers are healthy (or running, without a health check)."""

    selector: ContainerSelector
    expected: int = Field(ge=0)
    """How many containers the selector must find."""
    delay_s: float = 0.0
    retries: int = 60
    interval_s: float = 1.0
    """A replica has ``retries`` x ``interval_s`` seconds (plus ``min_ready_s``) to get ready,
    checked this often (or as often as the probe asks, when that is sooner)."""
    probe: ProbeSpec | None = None
    """Moorage's own probe; when set it decides readiness instead of Docker's health status."""
    min_ready_s: float = 0.0
    """A container counts only once it has been ready this long."""
    earlier_restarts_ok: bool = False
    """A replica the engine restarted (its restart policy, after it exited) fails the wait; with
    this set, only a restart during the wait does. For a restore, which may adopt a replica still
    running since before the deployment: a restart in its past is not this deployment's fault."""
    budget_s: float | None = None
    """``wait_healthy_briefly`` only: give up without a verdict after this long."""
    fail_after: int | None = Field(default=None, ge=1)
    """A replica not ready at this many checks in a row fails the wait at once (a verify: the
    replicas were ready and must stay so). None: only the window's end fails a replica that is not
    ready (or Docker's ``unhealthy``, or an exit)."""


class HealthWait(BaseModel):
    """What a brief health wait found within its budget."""

    instances: list[ServiceInstance] | None
    """The containers, all ready; None: not all ready yet (none failed either)."""
    checks: int = Field(ge=0)
    """How many checks it made."""
    used_s: float = Field(default=0.0, ge=0)
    """How much of the wait's window it used (the full wait that follows has the rest); 0.0 in
    results recorded before the window was one of time."""


class RouteInput(BaseModel):
    """Make sure a service has a route on the traffic router."""

    tenant: str
    project: str
    service: str
    container_port: str
    """The container port traffic goes to, e.g. ``80/tcp``."""
    published_port: int | None = None
    """The listen port the Compose file asks for, if any."""
    mode: RouteMode = "http"
    """How the router serves it: HTTP requests, or TCP connections passed through."""
    must_route: list[str] = []
    """Servers the route must hold already (a canary's stable replicas), else it is refused."""


class RoutesInput(BaseModel):
    """Make sure of the routes of a project's routed services, in one change."""

    routes: list[RouteInput]


class DeleteRoutesInput(BaseModel):
    """Delete the routes of services a project no longer routes."""

    tenant: str
    project: str
    services: list[str]


class RouteServersInput(BaseModel):
    """Add containers to (or take them out of) a service's route."""

    tenant: str
    project: str
    service: str
    containers: list[str]
    """Container names; they are also the server names."""
    weight: int = Field(default=100, ge=0, le=256)
    container_port: str | None = None
    """The port these containers serve the route on, their revision's (``80/tcp``); None: the
    route's. A revision may change it: the old replicas a rollback routes again serve on theirs."""


class RouteSwitchInput(BaseModel):
    """Switch traffic in one change: route ``add`` (ready), then drain ``remove`` out."""

    tenant: str
    project: str
    service: str
    add: list[str]
    """Containers to route to (names; also the server names)."""
    remove: list[str]
    """Servers to drain and take out once the new ones are in."""
    weight: int = Field(default=100, ge=0, le=256)
    container_port: str | None = None
    """The port the ``add`` containers serve the route on; None: the route's."""


class RouteWeightsInput(BaseModel):
    """Set the weights of a route's servers."""

    tenant: str
    project: str
    service: str
    weights: dict[str, int]


class LabelledContainer(BaseModel):
    """A container Moorage labelled, as the engine reports it (for reconciliation)."""

    name: str
    tenant: str
    project: str
    service: str
    revision: int
    deployment_id: str | None = None
    status: str


class ListLabelledInput(BaseModel):
    """Which labelled containers to list."""

    tenant: str | None = None
    """One tenant's, or (None) every tenant's."""
