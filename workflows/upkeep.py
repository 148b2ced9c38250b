"""What a project does beside its deployments: remove orphans, delete routes nothing serves.

Functions of the project workflow's state (:class:`~workflows.inputs.ProjectState`), run inside
the project workflow.
"""

from __future__ import annotations

import contextlib

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from activities.inputs import (
        ContainerSelector,
        DeleteRoutesInput,
        NetworkInput,
        RouteServersInput,
    )
    from moorage.compose import UNRESTRICTED, parse_compose
    from moorage.compose.models import PREVIEW_PREFIX
    from moorage.models import (
        DeploymentEvent,
        DeploymentState,
        DeploymentStatus,
        EventType,
        ServiceInstance,
    )
    from workflows import replicas, steps
    from workflows.bluegreen import preview_key
    from workflows.inputs import ProjectState

MAX_RECONCILE_LOG = 200
"""Reconcile events a project keeps (the oldest go first)."""

KEEP_FAILED = "reconcile-keeps-failed"
"""Patch: reconciliation keeps what a failed deployment left, until a later one completes."""


def left_by_failed(s: ProjectState, after: int | None) -> set[int]:
    """Revisions of the deployments after revision ``after`` that ended ``failed``.

    A failed deployment (``rollback_on_failure`` off, or its rollback failed) is left as it
    failed, and what it left may be all that serves: a blue-green's green after the switch, a
    rolling update's new replicas once the old ones are gone.
    """
    return {
        d.deployment.revision
        for d in s.deployments
        if d.deployment.status == DeploymentStatus.FAILED
        and (after is None or d.deployment.revision > after)
    }


async def reconcile(s: ProjectState, user_id: str) -> list[DeploymentEvent]:
    """Remove the project's labelled containers that no deployment owns; one event each, logged.

    Kept: the serving revision's, and what failed deployments since it left (until a later
    deployment completes). Each orphan leaves its route first.
    """
    keep = {s.current.revision} if s.current else set()
    # Runs started before this change removed what a failed deployment left, serving or not.
    if workflow.patched(KEEP_FAILED):
        keep |= left_by_failed(s, s.current.revision if s.current else None)
    found: list[ServiceInstance] = await steps.call(
        "list_containers",
        ContainerSelector(tenant=s.tenant_id, project=s.project_id),
        result_type=list[ServiceInstance],
    )
    events: list[DeploymentEvent] = []
    for orphan in (i for i in found if i.revision not in keep):
        await steps.call(
            "route_remove",
            RouteServersInput(
                tenant=s.tenant_id,
                project=s.project_id,
                service=orphan.service_name,
                containers=[orphan.container_name],
            ),
            result_type=list[str],
        )
        await replicas.remove_containers(
            ContainerSelector(
                tenant=s.tenant_id,
                project=s.project_id,
                service=orphan.service_name,
                revision=orphan.revision,
                slots=[orphan.slot],
            )
        )
        event = DeploymentEvent(
            event_type=EventType.ORPHAN_REMOVED,
            service_name=orphan.service_name,
            message=(
                f"removed {orphan.container_name}: revision {orphan.revision} is neither "
                f"serving nor deploying (kept: {', '.join(map(str, sorted(keep))) or 'none'})"
            ),
            details={
                "container": orphan.container_name,
                "revision": orphan.revision,
                "deployment": orphan.deployment_id,
                "status": orphan.status,
                "by": user_id,
            },
            created_at=workflow.now(),
        )
        events.append(event)
        # Logged at once: a pass that fails later still shows what it removed.
        s.reconcile_log = [*s.reconcile_log, event][-MAX_RECONCILE_LOG:]
    return events


def log_reconcile_failure(s: ProjectState, err: ActivityError | ApplicationError) -> None:
    """Log a scheduled pass that failed (the next pass tries again)."""
    reason, details = steps.failure_reason(err)
    event = DeploymentEvent(
        event_type=EventType.RECONCILE_FAILED,
        message=f"scheduled reconcile failed, the next pass tries again: {reason}",
        details={**details, "by": "schedule"},
        created_at=workflow.now(),
    )
    s.reconcile_log = [*s.reconcile_log, event][-MAX_RECONCILE_LOG:]


async def delete_routes_not_served(s: ProjectState, record: DeploymentState, enabled: bool) -> None:
    """Delete the routes of services the serving revision does not route; events on record.

    A service the revision dropped, or took off the router: its listen port closes. A failure
    leaves them listed, for the next completed deployment to try again.
    """
    assert s.current is not None
    routed = parse_compose(s.current.compose, policy=UNRESTRICTED, stored=True).routed
    # (Blue-green preview URLs, under preview_key, go with their service.)
    gone = sorted(n for n in s.routes if n not in routed and ":" not in n)
    if not gone or not enabled:
        return
    await delete_routes(s, record, gone, f"revision {s.current.revision} does not route it")


UNDONE_ROUTES = "undone-routes-deleted"
"""Patch: an undone deployment deletes the routes it made for services nothing serves."""


def routes_made_by(s: ProjectState, before: set[str], result: DeploymentState) -> list[str]:
    """Services an undone deployment made a route for that the serving revision does not route.

    ``before``: the services the project had routes for before the deployment. Those stay: a
    failed deployment before it (``rollback_on_failure`` off) may have left one serving.
    """
    if result.deployment.status not in (DeploymentStatus.ROLLED_BACK, DeploymentStatus.CANCELLED):
        return []
    routed: set[str] = (
        parse_compose(s.current.compose, policy=UNRESTRICTED, stored=True).routed
        if s.current is not None
        else set()
    )
    return sorted(n for n in result.routes if n not in before | routed and ":" not in n)


async def delete_routes(
    s: ProjectState, record: DeploymentState, gone: list[str], why: str
) -> None:
    """Delete the routes of services ``gone`` and their preview routes; events on record.

    A failure leaves them listed, for the next completed deployment to try again.
    """
    # A service's blue-green preview route goes with it (if it ever had one).
    services = [*gone, *(PREVIEW_PREFIX + n for n in gone)]
    try:
        deleted: list[str] = await steps.call(
            "delete_routes",
            DeleteRoutesInput(tenant=s.tenant_id, project=s.project_id, services=services),
            result_type=list[str],
        )
    except (ActivityError, ApplicationError) as err:
        reason, details = steps.failure_reason(err)
        record.events.append(
            DeploymentEvent(
                event_type=EventType.ROUTE_DELETE_FAILED,
                message=f"routes of {', '.join(gone)} kept: {reason}",
                details={**details, "services": gone},
                created_at=workflow.now(),
            )
        )
        return
    for name in gone:
        url = s.routes.pop(name)
        s.routes.pop(preview_key(name), None)
        # The deployment's own list too (its status answers routes): an undone one listed the
        # route it made after the route was gone.
        record.routes.pop(name, None)
        record.routes.pop(preview_key(name), None)
        if name in deleted:
            record.events.append(
                DeploymentEvent(
                    event_type=EventType.ROUTE_DELETED,
                    service_name=name,
                    message=f"route of {name} deleted ({url}): {why}",
                    created_at=workflow.now(),
                )
            )


UNDONE_NETWORK = "first-undone-removes-network"
"""Patch: a project's first deployment, undone, removes the project's network."""


async def remove_network_of_nothing(s: ProjectState, result: DeploymentState) -> None:
    """Remove the project's network when ``result`` was undone and no revision serves.

    The undo removed every container the deployment made; the network its first step made
    stayed, labelled, and nothing removed it. The step leaves it while any container of the
    project exists. An engine that does not answer leaves it (the next deployment uses it).
    """
    undone = (DeploymentStatus.ROLLED_BACK, DeploymentStatus.CANCELLED)
    if s.current is not None or result.deployment.status not in undone:
        return
    if not workflow.patched(UNDONE_NETWORK):
        return
    with contextlib.suppress(FailureError):  # a local step's timeout too: best effort
        await steps.call(
            "remove_network",
            NetworkInput(tenant=s.tenant_id, project=s.project_id),
            result_type=bool,
        )


SERVING_INSTANCES = "serving-instances-after-undo"
"""Patch: after a deployment that did not complete, the serving deployment's instances are read
again from the engine."""


async def refresh_serving_instances(
    s: ProjectState, serving: DeploymentState | None, result: DeploymentState
) -> None:
    """``serving``'s instances (the serving deployment) as they are after ``result``.

    ``result`` did not complete: its undo restores the replicas it replaced as new containers
    (new ids, new host ports), and one left as it failed may have removed some: the serving
    record listed containers that were gone. An engine that does not answer leaves the record
    as it was.
    """
    if result.deployment.status == DeploymentStatus.COMPLETED or s.current is None:
        return
    if serving is None or not workflow.patched(SERVING_INSTANCES):
        return
    with contextlib.suppress(FailureError):  # a local step's timeout too
        serving.instances = await steps.call(
            "list_containers",
            ContainerSelector(
                tenant=s.tenant_id, project=s.project_id, revision=s.current.revision
            ),
            result_type=list[ServiceInstance],
        )
