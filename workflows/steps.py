"""Shared machinery of every strategy: activity calls with their options, compensation stack.

The steps themselves (start, health gate, route, stop, remove) are in :mod:`workflows.replicas`.

The task queue of each activity is chosen in :func:`activity_queue` only, so sending host-bound
activities to a per-host queue (``moorage-host-<name>``) is a change in one place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
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
)

with workflow.unsafe.imports_passed_through():
    from activities.inputs import ContainerSelector, NetworkInput, WaitHealthyInput
    from moorage.compose import ProjectSpec
    from moorage.models import Deployment, EventType
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


QUICK_STEPS = frozenset(
    {
        "ensure_network",
        "ensure_route",
        "ensure_routes",
        "list_containers",
        "remove_containers",
        "remove_network",
    }
)
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


def network_input(dep: Deployment, target: ProjectSpec) -> NetworkInput:
    """A deployment's first step: its project's network, and every name the deployment makes.

    The replicas' container names and the named volumes are checked there too, so that a name
    another project or Moorage instance holds refuses the deployment before it changes anything
    (not when the service that needs it starts, after others have rolled).
    """
    return NetworkInput(
        tenant=dep.tenant_id,
        project=dep.project_id,
        revision=dep.revision,
        replicas={spec.name: spec.replicas for spec in target.services},
        volumes=sorted(
            {
                mount.source
                for spec in target.services
                for mount in spec.mounts
                if mount.type == "volume" and mount.source
            }
        ),
    )


def health_timeout(inp: WaitHealthyInput) -> timedelta:
    """A start-to-close timeout that outlasts every check the wait may make."""
    return timedelta(
        seconds=inp.delay_s + inp.retries * (inp.interval_s + 5) + inp.min_ready_s + 60
    )


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
    result_type: type | None = None
    then: Callable[[Any], None] | None = None
    """Called with the activity's result (decoded as ``result_type``) once it has run."""


class CompensationStack:
    """Undo steps, pushed before each side effect and unwound in reverse on failure or cancel."""

    def __init__(self) -> None:
        self.steps: list[Compensation] = []

    def push(
        self,
        description: str,
        activity_name: str,
        arg: BaseModel,
        timeout: timedelta | None = None,
        *,
        result_type: type | None = None,
        then: Callable[[Any], None] | None = None,
    ) -> None:
        """Record how to undo the side effect about to happen (``then``: see Compensation)."""
        self.steps.append(
            Compensation(
                description, activity_name, arg, timeout or timedelta(minutes=5), result_type, then
            )
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
            result = await workflow.execute_activity(
                step.activity,
                step.arg,
                task_queue=activity_queue(step.activity),
                start_to_close_timeout=step.timeout,
                heartbeat_timeout=HEARTBEAT,
                retry_policy=UNDO_RETRY,
                result_type=step.result_type,
            )
            if step.then is not None:
                step.then(result)
