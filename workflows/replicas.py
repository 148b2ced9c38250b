"""The steps of a strategy on replicas: start, health gate, route, stop, remove.

Each is one line in a strategy (see :mod:`workflows.rolling`), with its event beside it; the
replica groups (:func:`bring_up`, :func:`take_out`) put them together with their undo. The
activity calls themselves, their options and the compensation stack are in :mod:`workflows.steps`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from activities.inputs import (
        ContainerSelector,
        HealthWait,
        RouteInput,
        RouteServersInput,
        RoutesInput,
        RouteSwitchInput,
        StartServiceInput,
        StopContainersInput,
        StopWait,
        WaitHealthyInput,
    )
    from moorage import naming
    from moorage.compose import ServiceSpec
    from moorage.models import Deployment, DeploymentConfig, EventType, RouteInfo, ServiceInstance
    from workflows import steps
    from workflows.inputs import StrategyInput
    from workflows.tracking import Tracker


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


START_TIMEOUT = timedelta(minutes=10)
"""A start's attempt, image pull included; the same for the undo that starts old replicas again
(it had the default 5 minutes: a rollback's pull of a pruned image timed out where the
deployment's would not have)."""


async def start_service(
    dep: Deployment,
    revision: int,
    version: str,
    deployment_id: str,
    spec: ServiceSpec,
    slots: list[int],
) -> list[ServiceInstance]:
    """Start replicas ``slots`` of ``spec`` for ``revision``."""
    result: list[ServiceInstance] = await steps.call(
        "start_service",
        start_input(dep, revision, version, deployment_id, spec, slots),
        start_to_close=START_TIMEOUT,
        result_type=list[ServiceInstance],
    )
    return result


STEP_EVENTS = "bluegreen-canary-step-events"
"""Patch: blue-green and canary record their starts, and blue-green its stop and removal of blue,
as events (an event is a checkpoint and moves the progress deadline's clock)."""


async def start_new(
    t: Tracker,
    revision: int,
    spec: ServiceSpec,
    slots: list[int],
    what: str = "",
    *,
    logged: bool = True,
) -> list[ServiceInstance]:
    """Start the deployment's own replicas ``slots`` of ``spec``; a ``service_started`` event.

    ``what``: how the event names them ("green ", "canary "), before the service's name.
    ``logged``: False for runs started before :data:`STEP_EVENTS` (no event).
    """
    dep = t.deployment
    started = await start_service(dep, revision, dep.version, dep.id, spec, slots)
    if not logged:
        return started
    t.event(
        EventType.SERVICE_STARTED,
        f"started {what}{spec.name} replicas {slots} (revision {revision})",
        service=spec.name,
        containers=[i.container_name for i in started],
    )
    return started


def health_delay_and_retries(
    cfg: DeploymentConfig, spec: ServiceSpec | None = None
) -> tuple[float, int]:
    """A service's health delay and retries: its own ``x-moorage`` ones, else the deployment's."""
    delay = spec.health_check_delay if spec else None
    retries = spec.health_check_retries if spec else None
    return (
        cfg.health_check_delay if delay is None else delay,
        cfg.health_check_retries if retries is None else retries,
    )


def health_input(
    cfg: DeploymentConfig, sel: ContainerSelector, expected: int, spec: ServiceSpec | None = None
) -> WaitHealthyInput:
    """The health wait for ``expected`` containers under the deployment's health settings.

    The service's own ``x-moorage`` delay and retries come first.
    """
    delay_s, retries = health_delay_and_retries(cfg, spec)
    return WaitHealthyInput(
        selector=sel,
        expected=expected,
        delay_s=delay_s,
        retries=retries,
        interval_s=cfg.health_check_interval,
        probe=spec.probe if spec else None,
        min_ready_s=spec.min_ready_seconds if spec else 0.0,
    )


def restore_health_input(
    cfg: DeploymentConfig, sel: ContainerSelector, expected: int, spec: ServiceSpec | None = None
) -> WaitHealthyInput:
    """The health wait for a revision being restored.

    No initial delay: checks start at once, so a replica that is back quickly (one that was only
    stopped) holds the rollback up for no delay meant for the new revision. But the delay counts
    in the window: a replica the deployment removed starts cold, and a service that needs its
    ``health_check_delay`` to get ready (a database) failed the restore, and the unwind stopped
    there (status ``failed``, the services after it never restored).
    """
    inp = health_input(cfg, sel, expected, spec)
    delay_checks = math.ceil(inp.delay_s / inp.interval_s)
    inp.delay_s = 0.0
    inp.retries = max(inp.retries, 60) + delay_checks
    inp.min_ready_s = 0.0
    inp.earlier_restarts_ok = True
    return inp


async def wait_healthy(inp: WaitHealthyInput) -> list[ServiceInstance]:
    """Wait until the selected containers are healthy.

    When the wait may end within :data:`~workflows.steps.BRIEF_HEALTH_S` (its delay and
    ``min_ready_s`` are shorter), its first :data:`~workflows.steps.BRIEF_HEALTH_S` run as a local
    activity; the full wait, an ordinary activity, follows only if the containers are not ready by
    then, with the time that is left (a ``min_ready_s`` starts again there: stricter, never
    looser).
    """
    if inp.delay_s + inp.min_ready_s < steps.BRIEF_HEALTH_S and steps.runs_local(
        "wait_healthy_briefly"
    ):
        brief: HealthWait = await steps.call(
            "wait_healthy_briefly",
            inp.model_copy(update={"budget_s": steps.BRIEF_HEALTH_S}),
            start_to_close=timedelta(seconds=steps.BRIEF_HEALTH_S + 60),
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
    result: list[ServiceInstance] = await steps.call(
        "wait_healthy",
        inp,
        start_to_close=steps.health_timeout(inp),
        result_type=list[ServiceInstance],
    )
    return result


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
    inp = health_input(dep.config, steps.selector(dep, revision, spec.name, slots), expected, spec)
    if again:
        inp = inp.model_copy(update={"delay_s": 0.0, "min_ready_s": 0.0})
    try:
        instances = await wait_healthy(inp)
    # A local activity's failure arrives as its cause, not wrapped in an ActivityError.
    except (ActivityError, ApplicationError) as err:
        reason, details = steps.failure_reason(err)
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


async def stop_containers(sel: ContainerSelector, grace_s: float) -> list[str]:
    """Stop the selected containers within ``grace_s``; returns the names of those stopped.

    The stop signal and the first :data:`~workflows.steps.BRIEF_STOP_S` of the wait for it run as
    a local activity (``stop_containers_briefly``): most programs exit within milliseconds of it. A
    container still running then gets the full stop, an ordinary activity, for the rest of its
    grace period and SIGKILL after it, with no second signal. A cancel waits until the stop has
    ended, as it waits for any step: it never leaves a container signalled and running for the
    undo to adopt.
    """
    inp = StopContainersInput(selector=sel, grace_period_s=grace_s)
    # The patch is asked first: a workflow that started before it must not ask "local-brief-steps"
    # here, earlier than it did then (a patch's first answer sticks, and replay would diverge).
    if workflow.patched(steps.LOCAL_BRIEF_STOP) and steps.runs_local("stop_containers_briefly"):
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
        brief: StopWait = await steps.call(
            "stop_containers_briefly",
            inp.briefly(steps.BRIEF_STOP_S),
            start_to_close=timedelta(seconds=steps.BRIEF_STOP_S + 60),
            retry=steps.ONE_ATTEMPT,
            result_type=StopWait,
        )
    except FailureError:
        # Not retried (a retry would signal again): the full stop does it all, as `docker stop`.
        return await _stop_fully(inp)
    if not brief.running:
        return brief.stopped
    return brief.stopped + await _stop_fully(inp.after(brief))


async def _stop_fully(inp: StopContainersInput) -> list[str]:
    result: list[str] = await steps.call(
        "stop_containers",
        inp,
        start_to_close=timedelta(seconds=inp.grace_period_s + 120),
        result_type=list[str],
    )
    return result


async def remove_containers(sel: ContainerSelector) -> list[str]:
    """Remove the selected containers."""
    result: list[str] = await steps.call(
        "remove_containers", sel, start_to_close=timedelta(minutes=2), result_type=list[str]
    )
    return result


# --- traffic routing -------------------------------------------------------------------------


def route_servers(
    dep: Deployment, spec: ServiceSpec, revision: int, slots: list[int], weight: int = 100
) -> RouteServersInput:
    """The router input naming the containers of ``slots`` of one revision of a service."""
    port = spec.route_port()
    return RouteServersInput(
        tenant=dep.tenant_id,
        project=dep.project_id,
        service=spec.name,
        containers=[
            naming.container_name(dep.tenant_id, dep.project_id, spec.name, revision, s)
            for s in slots
        ],
        weight=weight,
        container_port=port.key if port is not None else None,
    )


ROUTES_AT_ONCE = "routes-at-once"
"""Patch: a deployment makes sure of its routes in one step, moved routes going back on undo."""


def _record_routes(t: Tracker, infos: list[RouteInfo]) -> None:
    for info in infos:
        t.state.routes[info.service] = info.url


async def ensure_routes(
    t: Tracker,
    inp: StrategyInput,
    undo: steps.CompensationStack,
    must_route: dict[str, list[str]] | None = None,
) -> None:
    """Make sure every routed service (one with a TCP port) has its route; record the URLs.

    One step for all of them, so that services may swap or hand over published ports. A route
    moved to another published port goes back if the deployment is undone (the old revision
    serves where its clients know it): to the port the serving revision publishes, else to the
    one the step moved it from (a retried step that found it moved already does not know that).
    ``must_route``: service -> servers its route must hold already, or the step refuses the
    deployment before it changes anything (``StableNotRouted``).
    """
    dep = t.deployment
    previous = inp.previous.spec if inp.previous is not None else None
    inputs = []
    for spec in inp.target.services:
        port = spec.route_port()
        if port is not None:
            inputs.append(
                RouteInput(
                    tenant=dep.tenant_id,
                    project=dep.project_id,
                    service=spec.name,
                    container_port=port.key,
                    published_port=port.published,
                    mode=spec.route_mode,
                    must_route=(must_route or {}).get(spec.name, []),
                )
            )
    if not inputs:
        return
    # Deployments started before this change made sure of the routes one at a time, and moved
    # none back.
    if not workflow.patched(ROUTES_AT_ONCE):
        for route in inputs:
            info: RouteInfo = await steps.call("ensure_route", route, result_type=RouteInfo)
            t.state.routes[route.service] = info.url
        return
    infos: list[RouteInfo] = await steps.call(
        "ensure_routes", RoutesInput(routes=inputs), result_type=list[RouteInfo]
    )
    _record_routes(t, infos)
    back, said = [], []
    for route, info in zip(inputs, infos, strict=True):
        old = (
            previous.service(route.service)
            if previous and route.service in previous.names
            else None
        )
        before = old.route_port() if old else None
        to = info.moved_from
        if before is not None and before.published is not None and route.published_port is not None:
            to = before.published if before.published != route.published_port else None
        # A route the serving revision serves in another mode (HTTP, TCP) goes back to it too.
        mode = old.route_mode if old is not None and before is not None else route.mode
        if to is not None or mode != route.mode:
            # On the serving revision's container port: its replicas serve on it again.
            served_on = before.key if before is not None else route.container_port
            back.append(
                route.model_copy(
                    update={
                        "published_port": to,
                        "mode": mode,
                        "container_port": served_on,
                        "must_route": [],
                    }
                )
            )
            said.append(
                route.service
                + (f" {to}" if to is not None else "")
                + (f" ({mode})" if mode != route.mode else "")
            )
    if back:
        undo.push(
            "routes back on their ports: " + ", ".join(said),
            "ensure_routes",
            RoutesInput(routes=back),
            result_type=list[RouteInfo],
            then=functools.partial(_record_routes, t),
        )


async def route_add(dep: Deployment, spec: ServiceSpec, revision: int, slots: list[int]) -> None:
    """Send traffic to these replicas too (no-op for a service without a route)."""
    if spec.route_port() is not None and slots:
        await steps.call(
            "route_add", route_servers(dep, spec, revision, slots), result_type=list[str]
        )


async def route_remove(dep: Deployment, spec: ServiceSpec, revision: int, slots: list[int]) -> None:
    """Drain these replicas out of the route; returns once in-flight requests are done."""
    if spec.route_port() is not None and slots:
        await steps.call(
            "route_remove",
            route_servers(dep, spec, revision, slots),
            start_to_close=timedelta(minutes=2),
            result_type=list[str],
        )


async def switch_traffic(
    dep: Deployment, old: ServiceSpec, revision: int, slots: list[int], routed_in: RouteServersInput
) -> None:
    """One route change: ``routed_in`` takes requests, then these old replicas drain out."""
    await steps.call(
        "route_switch",
        RouteSwitchInput(
            tenant=routed_in.tenant,
            project=routed_in.project,
            service=routed_in.service,
            add=routed_in.containers,
            remove=route_servers(dep, old, revision, slots).containers,
            weight=routed_in.weight,
            container_port=routed_in.container_port,
        ),
        start_to_close=timedelta(minutes=2),
        result_type=list[str],
    )


# --- replica groups: bring up, take out, each with its undo -----------------------------------


async def bring_up(
    t: Tracker,
    undo: steps.CompensationStack,
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
        steps.selector(dep, revision, spec.name, slots),
    )
    if spec.route_port() is not None:
        undo.push(
            f"take {spec.name} replicas {slots} (revision {revision}) out of the route",
            "route_remove",
            route_servers(dep, spec, revision, slots),
            timedelta(minutes=2),
        )
    await start_new(t, revision, spec, slots)
    instances = await gate_healthy(t, revision, spec, (serving or []) + slots)
    if route:
        await route_add(dep, spec, revision, slots)
    return [i for i in instances if i.slot in slots]


async def take_out(
    t: Tracker,
    undo: steps.CompensationStack,
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
            dep.config, steps.selector(dep, ref_revision, old.name, slots), len(slots), old
        ),
    )
    undo.push(
        f"restore {old.name} replicas {slots} (revision {ref_revision})",
        "start_service",
        start_input(dep, ref_revision, ref_version, ref_deployment, old, slots),
        START_TIMEOUT,
    )
    if routed_in is not None:
        await switch_traffic(dep, old, ref_revision, slots, routed_in)
    else:
        await route_remove(dep, old, ref_revision, slots)
    stopped = await stop_containers(
        steps.selector(dep, ref_revision, old.name, slots), old.stop_grace_period_s
    )
    await remove_containers(steps.selector(dep, ref_revision, old.name, slots))
    t.event(
        EventType.SERVICE_STOPPED,
        f"{old.name} replicas {slots} (revision {ref_revision}) drained, stopped and removed",
        service=old.name,
        containers=stopped,
    )
