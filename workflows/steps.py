"""Shared machinery of every strategy: activity calls with their options, compensation stack.

The task queue of each activity is chosen in :func:`activity_queue` only, so sending host-bound
activities to a per-host queue (``moorage-host-<name>``) is a change in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    FailureError,
)

with workflow.unsafe.imports_passed_through():
    from activities.inputs import (
        ContainerSelector,
        HealthWait,
        RouteInput,
        RouteServersInput,
        RouteSwitchInput,
        StartServiceInput,
        StopContainersInput,
        StopWait,
        WaitHealthyInput,
    )
    from moorage import naming
    from moorage.compose import ProjectSpec, ServiceSpec
    from moorage.models import Deployment, DeploymentConfig, EventType, RouteInfo, ServiceInstance
    from workflows.tracking import Tracker

STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=5,
)
"""Engine hiccups are retried a bounded number of times; refusals are never retried."""

ONE_ATTEMPT = RetryPolicy(maximum_attempts=1)
"""For a step whose retry would repeat what must happen once (a stop signal)."""

UNDO_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=30,
)
"""Compensation tries harder: giving up leaves the project in an unknown state."""

HEARTBEAT = timedelta(seconds=10)


def activity_queue(activity_name: str) -> str | None:
    """The task queue for an activity; None keeps the workflow's own queue.

    Every activity runs on the one shared queue today. With several Docker hosts, container,
    probe and local-proxy activities go to ``moorage-host-<name>`` here.
    """
    del activity_name
    return None


QUICK_STEPS = frozenset({"ensure_network", "ensure_route", "list_containers", "remove_containers"})
"""Steps that only ask the engine or the proxy for one thing and never wait for a container.

They run as local activities (see :func:`runs_local`): inside the workflow task, on the worker that
runs the workflow, with no round trip through the Temporal server. A step that may wait long (start
with an image pull, the full health wait, stop with its grace period) stays an ordinary activity:
it heartbeats, and a cancel, query or update is never held up behind it. Brief steps
(:data:`BRIEF_STEPS`) wait, but briefly and with a bound.
"""

LOCAL_QUICK_STEPS = "local-quick-steps"
"""Patch: workflows that started before quick steps ran locally keep running them as activities."""

BRIEF_STEPS = frozenset(
    {
        "route_add",
        "route_remove",
        "route_switch",
        "route_weights",
        "wait_healthy_briefly",
        "stop_containers_briefly",
    }
)
"""Steps that may wait, but only briefly and with a bound, so they also run as local activities.

A router change waits for its drain: in-flight requests end, usually within milliseconds, and the
router gives up after its drain timeout (10 s). ``wait_healthy_briefly`` is the first
:data:`BRIEF_HEALTH_S` of a health gate, ``stop_containers_briefly`` a stop's signal and the first
:data:`BRIEF_STOP_S` of its wait. Run locally they save a round trip through the Temporal server
each (a workflow task and an activity task): three per replica in a rolling update. While one
runs, the workflow task waits for it, and so does a query, a cancel or an update: up to 2 s behind
the health wait or a stop, as long as the drain behind a router change. A drain that outlasts the
workflow task timeout (10 s) keeps the task alive: the worker answers queries at its heartbeats
(~8 s).
"""

LOCAL_BRIEF_STEPS = "local-brief-steps"
"""Patch: workflows that started before brief steps ran locally keep running them as activities."""

BRIEF_HEALTH_S = 2.0
"""How long the health gate waits locally before it hands over to the full wait (an activity)."""

BRIEF_STOP_S = 2.0
"""How long a stop waits locally for its signal to work before the full stop (an activity)."""

LOCAL_BRIEF_STOP = "local-brief-stop"
"""Patch: workflows that started before a stop's first seconds ran locally stop by activity only."""


def runs_local(activity_name: str) -> bool:
    """Whether a step runs as a local activity.

    Only a quick or a brief step, and only while it runs on the workflow's own task queue: once
    such a step goes to a host's queue (:func:`activity_queue`), it is an ordinary activity again.
    """
    if activity_queue(activity_name) is not None:
        return False
    if activity_name in QUICK_STEPS:
        return workflow.patched(LOCAL_QUICK_STEPS)
    if activity_name in BRIEF_STEPS:
        return workflow.patched(LOCAL_BRIEF_STEPS)
    return False


async def call(
    activity_name: str,
    arg: BaseModel,
    *,
    start_to_close: timedelta = timedelta(minutes=5),
    retry: RetryPolicy = STEP_RETRY,
    result_type: type | None = None,
) -> Any:
    """Run one activity by its pinned name, with Moorage's standard options.

    A quick or brief step runs as a local activity (:func:`runs_local`), with the same timeout and
    retries.

    Raises:
        ActivityError: the activity failed for good (its cause says why). A local activity's
            failure is raised as its cause itself (an ``ApplicationError``, unwrapped).
    """
    # Cancel waits until the activity has stopped, so compensation never races a step that is
    # still creating containers.
    cancellation = workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
    if runs_local(activity_name):
        return await workflow.execute_local_activity(
            activity_name,
            arg,
            start_to_close_timeout=start_to_close,
            retry_policy=retry,
            cancellation_type=cancellation,
            result_type=result_type,
        )
    return await workflow.execute_activity(
        activity_name,
        arg,
        task_queue=activity_queue(activity_name),
        start_to_close_timeout=start_to_close,
        heartbeat_timeout=HEARTBEAT,
        retry_policy=retry,
        cancellation_type=cancellation,
        result_type=result_type,
    )


async def side_by_side(*steps: Awaitable[Any]) -> list[Any]:
    """Run independent steps at the same time; once every one has ended, raise the first failure.

    Unlike a bare ``asyncio.gather``, a failure does not leave the other steps running while the
    compensation starts. A cancel still reaches all of them.
    """
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def selector(
    dep: Deployment, revision: int, service: str | None = None, slots: list[int] | None = None
) -> ContainerSelector:
    """Containers of one revision of the deployment's project (optionally one service/slots)."""
    return ContainerSelector(
        tenant=dep.tenant_id,
        project=dep.project_id,
        service=service,
        revision=revision,
        slots=slots,
    )


async def start_service(
    dep: Deployment,
    revision: int,
    version: str,
    deployment_id: str,
    spec: ServiceSpec,
    slots: list[int],
) -> list[ServiceInstance]:
    """Start replicas ``slots`` of ``spec`` for ``revision``."""
    result: list[ServiceInstance] = await call(
        "start_service",
        start_input(dep, revision, version, deployment_id, spec, slots),
        start_to_close=timedelta(minutes=10),
        result_type=list[ServiceInstance],
    )
    return result


def health_input(
    cfg: DeploymentConfig, sel: ContainerSelector, expected: int, spec: ServiceSpec | None = None
) -> WaitHealthyInput:
    """The health wait for ``expected`` containers under the deployment's health settings.

    The service's own ``x-moorage`` delay and retries come first.
    """
    delay = spec.health_check_delay if spec else None
    retries = spec.health_check_retries if spec else None
    return WaitHealthyInput(
        selector=sel,
        expected=expected,
        delay_s=cfg.health_check_delay if delay is None else delay,
        retries=cfg.health_check_retries if retries is None else retries,
        interval_s=cfg.health_check_interval,
        probe=spec.probe if spec else None,
        min_ready_s=spec.min_ready_seconds if spec else 0.0,
    )


def restore_health_input(
    cfg: DeploymentConfig, sel: ContainerSelector, expected: int, spec: ServiceSpec | None = None
) -> WaitHealthyInput:
    """The health wait for a revision being restored.

    It was healthy before, so no initial delay: a long delay meant for the new revision would only
    hold the rollback up.
    """
    inp = health_input(cfg, sel, expected, spec)
    inp.delay_s = 0.0
    inp.retries = max(inp.retries, 60)
    inp.min_ready_s = 0.0
    inp.earlier_restarts_ok = True
    return inp


def health_timeout(inp: WaitHealthyInput) -> timedelta:
    """A start-to-close timeout that outlasts every check the wait may make."""
    return timedelta(
        seconds=inp.delay_s + inp.retries * (inp.interval_s + 5) + inp.min_ready_s + 60
    )


async def wait_healthy(inp: WaitHealthyInput) -> list[ServiceInstance]:
    """Wait until the selected containers are healthy.

    When the wait may end within :data:`BRIEF_HEALTH_S` (its delay and ``min_ready_s`` are
    shorter), its first :data:`BRIEF_HEALTH_S` run as a local activity; the full wait, an
    ordinary activity, follows only if the containers are not ready by then, with the time that
    is left (a ``min_ready_s`` starts again there: stricter, never looser).
    """
    if inp.delay_s + inp.min_ready_s < BRIEF_HEALTH_S and runs_local("wait_healthy_briefly"):
        brief: HealthWait = await call(
            "wait_healthy_briefly",
            inp.model_copy(update={"budget_s": BRIEF_HEALTH_S}),
            start_to_close=timedelta(seconds=BRIEF_HEALTH_S + 60),
            result_type=HealthWait,
        )
        if brief.instances is not None:
            return brief.instances
        # The window's time it used, in intervals (a result recorded before the window was one
        # of time has only its checks).
        used = (
            int(brief.used_s // inp.interval_s)
            if "used_s" in brief.model_fields_set
            else brief.checks
        )
        inp = inp.model_copy(update={"delay_s": 0.0, "retries": max(1, inp.retries - used)})
    result: list[ServiceInstance] = await call(
        "wait_healthy", inp, start_to_close=health_timeout(inp), result_type=list[ServiceInstance]
    )
    return result


async def stop_containers(sel: ContainerSelector, grace_s: float) -> list[str]:
    """Stop the selected containers within ``grace_s``; returns the names of those stopped.

    The stop signal and the first :data:`BRIEF_STOP_S` of the wait for it run as a local activity
    (``stop_containers_briefly``): most programs exit within milliseconds of it. A container still
    running then gets the full stop, an ordinary activity, for the rest of its grace period and
    SIGKILL after it, with no second signal. A cancel waits until the stop has ended, as it waits
    for any step: it never leaves a container signalled and running for the undo to adopt.
    """
    inp = StopContainersInput(selector=sel, grace_period_s=grace_s)
    # The patch is asked first: a workflow that started before it must not ask "local-brief-steps"
    # here, earlier than it did then (a patch's first answer sticks, and replay would diverge).
    if workflow.patched(LOCAL_BRIEF_STOP) and runs_local("stop_containers_briefly"):
        stop = asyncio.create_task(_stop_briefly_first(inp))
        try:
            return await asyncio.shield(stop)
        except asyncio.CancelledError:
            while not stop.done():  # a second cancel (abort, deadline) waits as well
                with contextlib.suppress(asyncio.CancelledError):
                    await workflow.wait([stop])
            if not stop.cancelled():
                stop.exception()  # looked at: the cancel goes on, whatever the stop's outcome
            raise
    return await _stop_fully(inp)


async def _stop_briefly_first(inp: StopContainersInput) -> list[str]:
    """The brief stop, then the full stop for the containers still running."""
    try:
        brief: StopWait = await call(
            "stop_containers_briefly",
            inp.briefly(BRIEF_STOP_S),
            start_to_close=timedelta(seconds=BRIEF_STOP_S + 60),
            retry=ONE_ATTEMPT,
            result_type=StopWait,
        )
    except FailureError:
        # Not retried (a retry would signal again): the full stop does it all, as `docker stop`.
        return await _stop_fully(inp)
    if not brief.running:
        return brief.stopped
    return brief.stopped + await _stop_fully(inp.after(brief))


async def _stop_fully(inp: StopContainersInput) -> list[str]:
    result: list[str] = await call(
        "stop_containers",
        inp,
        start_to_close=timedelta(seconds=inp.grace_period_s + 120),
        result_type=list[str],
    )
    return result


async def remove_containers(sel: ContainerSelector) -> list[str]:
    """Remove the selected containers."""
    result: list[str] = await call(
        "remove_containers", sel, start_to_close=timedelta(minutes=2), result_type=list[str]
    )
    return result


def failure_reason(err: BaseException) -> tuple[str, dict[str, Any]]:
    """The root message and details of a failure, for events and the deployment message."""
    details: dict[str, Any] = {}
    cause: BaseException | None = err
    message = str(err)
    while cause is not None:
        if isinstance(cause, ApplicationError):
            message = cause.message
            if cause.details and isinstance(cause.details[0], dict):
                details = dict(cause.details[0])
            if cause.type:
                details.setdefault("error_type", cause.type)
            break
        if isinstance(cause, ActivityError | ChildWorkflowError):
            cause = cause.cause
            continue
        message = str(cause) or type(cause).__name__
        break
    return message, details


@dataclass
class Compensation:
    """One undo: an activity and its input, recorded before the side effect it undoes."""

    description: str
    activity: str
    arg: BaseModel
    timeout: timedelta = timedelta(minutes=5)


class CompensationStack:
    """Undo steps, pushed before each side effect and unwound in reverse on failure or cancel."""

    def __init__(self) -> None:
        self.steps: list[Compensation] = []

    def push(
        self, description: str, activity_name: str, arg: BaseModel, timeout: timedelta | None = None
    ) -> None:
        """Record how to undo the side effect about to happen."""
        self.steps.append(
            Compensation(description, activity_name, arg, timeout or timedelta(minutes=5))
        )

    def push_wait_healthy(self, description: str, inp: WaitHealthyInput) -> None:
        """Record a health wait (e.g. for a restored revision) as an undo step."""
        self.push(description, "wait_healthy", inp, health_timeout(inp))

    async def unwind(self, tracker: Tracker) -> None:
        """Run every undo step, newest first.

        Each is retried hard; the first that still fails stops the unwind (later steps may depend
        on it) and is raised.

        Raises:
            ActivityError: an undo step failed after all its retries.
        """
        while self.steps:
            step = self.steps.pop()
            tracker.event(EventType.ROLLBACK_STEP, step.description)
            await workflow.execute_activity(
                step.activity,
                step.arg,
                task_queue=activity_queue(step.activity),
                start_to_close_timeout=step.timeout,
                heartbeat_timeout=HEARTBEAT,
                retry_policy=UNDO_RETRY,
            )


async def gate_healthy(
    t: Tracker,
    revision: int,
    spec: ServiceSpec,
    slots: list[int] | None = None,
    again: bool = False,
) -> list[ServiceInstance]:
    """The health gate: wait until the service's replicas are healthy, with events either way.

    ``again``: replicas that passed their gate already are checked once more (no health delay, no
    ``min_ready_seconds`` a second time).

    Raises:
        ActivityError: the replicas did not get healthy (the event carries the container's log);
            an ``ApplicationError`` when the brief wait (a local activity) found that out.
    """
    dep = t.deployment
    expected = len(slots) if slots is not None else spec.replicas
    inp = health_input(dep.config, selector(dep, revision, spec.name, slots), expected, spec)
    if again:
        inp = inp.model_copy(update={"delay_s": 0.0, "min_ready_s": 0.0})
    try:
        instances = await wait_healthy(inp)
    # A local activity's failure arrives as its cause, not wrapped in an ActivityError.
    except (ActivityError, ApplicationError) as err:
        reason, details = failure_reason(err)
        t.event(
            EventType.HEALTH_CHECK_FAILED, reason, service=spec.name, revision=revision, **details
        )
        raise
    t.event(
        EventType.HEALTH_CHECK_PASSED,
        f"{spec.name}: {expected} replica(s) of revision {revision} healthy",
        service=spec.name,
        containers=[i.container_name for i in instances],
    )
    return instances


def start_input(
    dep: Deployment,
    ref_revision: int,
    version: str,
    deployment_id: str,
    spec: ServiceSpec,
    slots: list[int],
) -> StartServiceInput:
    """The start_service input for replicas of one revision of a service."""
    return StartServiceInput(
        tenant=dep.tenant_id,
        project=dep.project_id,
        deployment_id=deployment_id,
        revision=ref_revision,
        version=version,
        service=spec,
        slots=slots,
    )


# --- traffic routing -------------------------------------------------------------------------


def route_servers(
    dep: Deployment, spec: ServiceSpec, revision: int, slots: list[int], weight: int = 100
) -> RouteServersInput:
    """The router input naming the containers of ``slots`` of one revision of a service."""
    return RouteServersInput(
        tenant=dep.tenant_id,
        project=dep.project_id,
        service=spec.name,
        containers=[
            naming.container_name(dep.tenant_id, dep.project_id, spec.name, revision, s)
            for s in slots
        ],
        weight=weight,
    )


async def ensure_routes(t: Tracker, target: ProjectSpec) -> None:
    """Make sure every routed service (one with a TCP port) has its route; record the URLs."""
    dep = t.deployment
    for spec in target.services:
        port = spec.route_port()
        if port is None:
            continue
        info: RouteInfo = await call(
            "ensure_route",
            RouteInput(
                tenant=dep.tenant_id,
                project=dep.project_id,
                service=spec.name,
                container_port=port.key,
                published_port=port.published,
            ),
            result_type=RouteInfo,
        )
        t.state.routes[spec.name] = info.url


async def route_add(dep: Deployment, spec: ServiceSpec, revision: int, slots: list[int]) -> None:
    """Send traffic to these replicas too (no-op for a service without a route)."""
    if spec.route_port() is not None and slots:
        await call("route_add", route_servers(dep, spec, revision, slots), result_type=list[str])


async def route_remove(dep: Deployment, spec: ServiceSpec, revision: int, slots: list[int]) -> None:
    """Drain these replicas out of the route; returns once in-flight requests are done."""
    if spec.route_port() is not None and slots:
        await call(
            "route_remove",
            route_servers(dep, spec, revision, slots),
            start_to_close=timedelta(minutes=2),
            result_type=list[str],
        )


async def switch_traffic(
    dep: Deployment, old: ServiceSpec, revision: int, slots: list[int], routed_in: RouteServersInput
) -> None:
    """One route change: ``routed_in`` takes requests, then these old replicas drain out."""
    await call(
        "route_switch",
        RouteSwitchInput(
            tenant=routed_in.tenant,
            project=routed_in.project,
            service=routed_in.service,
            add=routed_in.containers,
            remove=route_servers(dep, old, revision, slots).containers,
            weight=routed_in.weight,
        ),
        start_to_close=timedelta(minutes=2),
        result_type=list[str],
    )


# --- replica groups: bring up, take out, each with its undo -----------------------------------


async def bring_up(
    t: Tracker,
    undo: CompensationStack,
    spec: ServiceSpec,
    revision: int,
    slots: list[int],
    route: bool = True,
    serving: list[int] | None = None,
) -> list[ServiceInstance]:
    """Start replicas of the deployment's revision, gate them healthy, route traffic to them.

    ``route=False`` leaves the routing to the ``take_out`` that follows (one traffic switch).
    ``serving``: replicas of the same revision started before; the gate checks them again, so one
    that died since fails the deployment before more old replicas go.
    Undo (pushed first): take them out of the route, then remove them.
    """
    dep = t.deployment
    undo.push(
        f"remove {spec.name} replicas {slots} (revision {revision})",
        "remove_containers",
        selector(dep, revision, spec.name, slots),
    )
    if spec.route_port() is not None:
        undo.push(
            f"take {spec.name} replicas {slots} (revision {revision}) out of the route",
            "route_remove",
            route_servers(dep, spec, revision, slots),
            timedelta(minutes=2),
        )
    started = await start_service(dep, revision, dep.version, dep.id, spec, slots)
    t.event(
        EventType.SERVICE_STARTED,
        f"started {spec.name} replicas {slots} (revision {revision})",
        service=spec.name,
        containers=[i.container_name for i in started],
    )
    instances = await gate_healthy(t, revision, spec, (serving or []) + slots)
    if route:
        await route_add(dep, spec, revision, slots)
    return [i for i in instances if i.slot in slots]


async def take_out(
    t: Tracker,
    undo: CompensationStack,
    old: ServiceSpec,
    ref_revision: int,
    ref_version: str,
    ref_deployment: str,
    slots: list[int],
    routed_in: RouteServersInput | None = None,
) -> None:
    """Drain replicas of an old revision out of the route, stop them, remove them.

    ``routed_in``: new replicas (healthy, same route) that take the traffic in the same route
    change, before the old ones drain: the "switch traffic" step.
    Undo (pushed first, runs start -> healthy -> routed): bring them back as they were.
    """
    if not slots:
        return
    dep = t.deployment
    if old.route_port() is not None:
        undo.push(
            f"route {old.name} replicas {slots} (revision {ref_revision}) again",
            "route_add",
            route_servers(dep, old, ref_revision, slots),
        )
    undo.push_wait_healthy(
        f"wait for restored {old.name} replicas {slots} (revision {ref_revision})",
        restore_health_input(
            dep.config, selector(dep, ref_revision, old.name, slots), len(slots), old
        ),
    )
    undo.push(
        f"restore {old.name} replicas {slots} (revision {ref_revision})",
        "start_service",
        start_input(dep, ref_revision, ref_version, ref_deployment, old, slots),
    )
    if routed_in is not None:
        await switch_traffic(dep, old, ref_revision, slots, routed_in)
    else:
        await route_remove(dep, old, ref_revision, slots)
    stopped = await stop_containers(
        selector(dep, ref_revision, old.name, slots), old.stop_grace_period_s
    )
    await remove_containers(selector(dep, ref_revision, old.name, slots))
    t.event(
        EventType.SERVICE_STOPPED,
        f"{old.name} replicas {slots} (revision {ref_revision}) drained, stopped and removed",
        service=old.name,
        containers=stopped,
    )
