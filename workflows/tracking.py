"""Progress, status and the event log of one deployment, kept as workflow state.

Queries read this state; the Temporal UI shows it through search attributes and the current
details line. Every strategy records through one :class:`Tracker`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from moorage.models import (
        Deployment,
        DeploymentEvent,
        DeploymentState,
        DeploymentStatus,
        EventType,
        ServiceInstance,
    )
    from workflows import search_attributes as sa


class Tracker:
    """Records one deployment's status, progress, message, events and instances."""

    def __init__(self, deployment: Deployment):
        self.state = DeploymentState(deployment=deployment)
        self.cancel_requested = False
        """Set by the cancel signal. A cancel that reaches an activity just as it completes is
        lost by asyncio (the step's result wins), so every recorded step also checks this."""
        self.in_flow = False
        """True while the strategy's steps run (and not while undoing them)."""
        self.moved_at = workflow.now()
        """When the deployment last moved: progress or an event (the progress deadline's clock)."""

    def checkpoint(self) -> None:
        """Stop the flow here if a cancel was requested.

        Raises:
            asyncio.CancelledError: a cancel was requested while the steps run.
        """
        if self.cancel_requested and self.in_flow:
            raise asyncio.CancelledError("deployment cancelled")

    @property
    def deployment(self) -> Deployment:
        """The deployment record."""
        return self.state.deployment

    def event(
        self,
        event_type: EventType,
        message: str,
        service: str | None = None,
        **details: Any,
    ) -> None:
        """Append an event to the log."""
        self.state.events.append(
            DeploymentEvent(
                event_type=event_type,
                service_name=service,
                message=message,
                details=details,
                created_at=workflow.now(),
            )
        )
        self.moved_at = workflow.now()
        self._details()
        self.checkpoint()

    def progress(self, value: int, message: str) -> None:
        """Move progress forward (it never goes back) and set the message."""
        self.deployment.progress = max(self.deployment.progress, min(100, value))
        self.deployment.message = message
        self.moved_at = workflow.now()
        self._details()
        self.checkpoint()

    def status(self, status: DeploymentStatus, message: str | None = None) -> None:
        """Enter a new status; terminal statuses stamp ``completed_at``."""
        self.deployment.status = status
        if message is not None:
            self.deployment.message = message
        if status == DeploymentStatus.IN_PROGRESS and self.deployment.started_at is None:
            self.deployment.started_at = workflow.now()
        if status.terminal:
            self.deployment.completed_at = workflow.now()
        workflow.upsert_search_attributes([sa.DEPLOYMENT_STATUS.value_set(status.value)])
        self._details()

    def instances(self, instances: list[ServiceInstance]) -> None:
        """Replace the recorded instances."""
        self.state.instances = instances

    def _details(self) -> None:
        d = self.deployment
        workflow.set_current_details(
            f"**{d.status.value}** {d.progress}% (revision {d.revision}, version {d.version})"
            f"\n\n{d.message}"
        )
