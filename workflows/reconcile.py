"""ReconcileAll: find containers Moorage labelled that nothing owns, on a schedule.

Each project with labelled containers is asked to reconcile itself (its workflow knows which
revision serves and which deploys). Containers of a project with no running project workflow
belong to nobody and are removed here, each with an event in the result.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from activities.inputs import ContainerSelector, LabelledContainer, ListLabelledInput
    from moorage import naming
    from moorage.models import DeploymentEvent, EventType
    from workflows import replicas, steps

ONLY_NOT_FOUND = "reconcile-all-only-not-found"
"""Patch: a project whose workflow could not be signalled for another reason than not being
found keeps its containers."""

SCHEDULE_ID = "moorage/reconcile-all"
WORKFLOW_ID = "moorage/reconcile-all/run"


def _kept(tenant: str, project: str, err: BaseException, what: str) -> DeploymentEvent:
    """A project whose containers this pass keeps, and why; the next pass tries again."""
    reason, details = steps.failure_reason(err)
    return DeploymentEvent(
        event_type=EventType.RECONCILE_FAILED,
        message=f"project {project} of tenant {tenant}: {what} containers kept, the next pass "
        f"tries again: {reason}",
        details={**details, "tenant": tenant, "project": project},
        created_at=workflow.now(),
    )


@workflow.defn(name="ReconcileAll")
class ReconcileAllWorkflow:
    """One pass over every labelled container on the engine."""

    @workflow.run
    async def run(self, inp: ListLabelledInput) -> list[DeploymentEvent]:
        """Ask owned projects to reconcile; remove what belongs to no project workflow."""
        found: list[LabelledContainer] = await steps.call(
            "list_labelled", inp, result_type=list[LabelledContainer]
        )
        projects = sorted({(c.tenant, c.project) for c in found})
        events: list[DeploymentEvent] = []
        for tenant, project in projects:
            handle = workflow.get_external_workflow_handle(
                naming.project_workflow_id(tenant, project)
            )
            try:
                await handle.signal("reconcile_requested")
                continue
            except FailureError as err:
                # "not found": no such (running) project workflow, nobody owns these containers.
                # Another failure (the per-workflow signal limit of a project held for months)
                # says nothing of the owner: passes started before this change removed its
                # containers all the same, serving ones included.
                if "not found" not in str(err) and workflow.patched(ONLY_NOT_FOUND):
                    events.append(
                        _kept(tenant, project, err, "could not be asked to reconcile, its")
                    )
                    continue
            try:
                removed = await replicas.remove_containers(
                    ContainerSelector(tenant=tenant, project=project)
                )
            except (ActivityError, ApplicationError) as err:
                # Passes started before this change failed here, and never reached the projects
                # after this one (while the fault lasted, no scheduled pass did).
                if not workflow.patched("reconcile-all-goes-on"):
                    raise
                events.append(_kept(tenant, project, err, "failed to remove its"))
                continue
            events += [
                DeploymentEvent(
                    event_type=EventType.ORPHAN_REMOVED,
                    message=f"removed {name}: project {project} of tenant {tenant} does not exist",
                    details={"container": name, "tenant": tenant, "project": project},
                    created_at=workflow.now(),
                )
                for name in removed
            ]
        removed_count = sum(e.event_type == EventType.ORPHAN_REMOVED for e in events)
        failed = len(events) - removed_count
        workflow.set_current_details(
            f"{len(projects)} project(s) checked; "
            f"{removed_count} orphan(s) of unknown projects removed"
            + (f"; {failed} project(s) failed (see the result)" if failed else "")
        )
        return events
