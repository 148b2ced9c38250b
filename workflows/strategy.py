"""What every strategy workflow shares: the status machine, cancel, failure and compensation.

A strategy subclasses :class:`StrategyWorkflow` and writes only its steps (``flow``); this base
runs them as a task that a cancel signal can interrupt, and on failure or cancel unwinds the
compensation stack so the project ends as it was before the deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from moorage.models import (
        Deployment,
        DeploymentEvent,
        DeploymentState,
        DeploymentStatus,
        EventType,
        ServiceInstance,
    )
    from workflows import steps
    from workflows.inputs import StrategyInput
    from workflows.tracking import Tracker


CANCEL_AFTER_ABORT = "cancel-after-abort-ignored"
"""Patch: a cancel that comes after an abort stopped the steps is ignored (the API answers 409)."""


UNDO_WHOLE = "undo-runs-to-its-end"
"""Patch: a workflow cancel during the undo no longer cancels it."""


class StrategyWorkflow:
    """Base of the strategy workflows (not a workflow itself)."""

    def __init__(self) -> None:
        self.tracker: Tracker | None = None
        self.undo = steps.CompensationStack()
        self._task: asyncio.Task[None] | None = None
        self._cancel_requested_by: str | None = None
        self._deadline_hit: str | None = None
        """Why the progress deadline stopped the steps, once it has."""
        self._aborted_by: str | None = None
        self._cancel_before_start: str | None = None
        """Who cancelled before the first step: a signal that came with the workflow's start is
        handled before ``execute`` runs (it used to be dropped, and the deployment completed)."""

    # --- the steps, written by each strategy ----------------------------------------------------

    async def flow(self, inp: StrategyInput, t: Tracker) -> None:
        """The strategy's steps, in order."""
        raise NotImplementedError

    # --- handlers ------------------------------------------------------------------------------

    @workflow.signal(name="cancel")
    def cancel(self, user_id: str) -> None:
        """Cancel the deployment: stop the current step and undo everything done so far."""
        if self._cancel_requested_by is not None:
            return
        if self.tracker is None:
            self._cancel_before_start = user_id or "unknown"
            return
        if self.tracker.deployment.status.terminal:
            return
        if self._aborted_by and workflow.patched(CANCEL_AFTER_ABORT):
            # Its undo follows already, as the rollback the abort makes; a cancel there made it
            # end "cancelled" instead. (One after the progress deadline is taken: it asks for
            # the undo a deadline with rollback_on_failure off would not run.)
            return
        self._cancel_requested_by = user_id or "unknown"
        self.tracker.in_flow = False  # recording the request must not raise inside a handler
        self.tracker.event(
            EventType.CANCEL_REQUESTED,
            f"cancel requested by {self._cancel_requested_by}",
            user=user_id,
        )
        self.tracker.cancel_requested = True
        self.tracker.in_flow = self._task is not None and not self._task.done()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    @workflow.query(name="state")
    def state(self) -> DeploymentState | None:
        """Deployment record, events and instances."""
        return self.tracker.state if self.tracker else None

    @workflow.query(name="progress")
    def progress(self) -> int:
        """Progress, 0 to 100."""
        return self.tracker.deployment.progress if self.tracker else 0

    @workflow.query(name="status")
    def status(self) -> Deployment | None:
        """The deployment record (status, progress, message)."""
        return self.tracker.deployment if self.tracker else None

    @workflow.query(name="events")
    def events(self) -> list[DeploymentEvent]:
        """The event log."""
        return self.tracker.state.events if self.tracker else []

    @workflow.query(name="instances")
    def instances(self) -> list[ServiceInstance]:
        """The containers this deployment made."""
        return self.tracker.state.instances if self.tracker else []

    # --- the run -------------------------------------------------------------------------------

    async def execute(self, inp: StrategyInput) -> DeploymentState:
        """Run ``flow`` under the status machine; always returns the final state."""
        t = self.tracker = Tracker(inp.deployment)
        dep = t.deployment
        t.status(DeploymentStatus.IN_PROGRESS, "deployment started")
        t.event(
            EventType.DEPLOYMENT_STARTED,
            f"deploying revision {dep.revision} (version {dep.version}) with {dep.strategy.value}",
            strategy=dep.strategy.value,
            previous_revision=inp.previous.revision if inp.previous else None,
            user=dep.user_id,
        )
        t.in_flow = True
        self._task = asyncio.create_task(self.flow(inp, t))
        if self._cancel_before_start is not None and workflow.patched("cancel-before-start"):
            self.cancel(self._cancel_before_start)  # the task is cancelled before its first step
        # Deployments started before this change had the deadline bound their whole run.
        watch = (
            self._watch_progress
            if workflow.patched("progress-deadline-idle")
            else self._watch_deadline
        )
        deadline = asyncio.create_task(watch(t, dep.config.progress_deadline))
        try:
            try:
                await self._task
            except asyncio.CancelledError:
                self._stopped(t)
                raise
            except (ActivityError, ChildWorkflowError, ApplicationError):
                # A step that is an activity ends with the activity's cancellation, not with
                # CancelledError, when an abort or the deadline stops it (the health gate alone
                # turned it back). Deployments started before this change took it for a failure
                # with the reason "Activity cancelled". (An operator's cancel was always told
                # apart, below: the patch is not asked for it.)
                if not (
                    self._task.cancelling()
                    and self._cancel_requested_by is None
                    and workflow.patched("stopped-in-a-step")
                ):
                    raise
                self._stopped(t)
                raise asyncio.CancelledError from None
            finally:
                t.in_flow = False
                deadline.cancel()
        except asyncio.CancelledError:
            await self._undo(t, DeploymentStatus.CANCELLED, "cancelled")
            return t.state
        except (ActivityError, ChildWorkflowError, ApplicationError) as err:
            if self._cancel_requested_by is not None:
                await self._undo(t, DeploymentStatus.CANCELLED, "cancelled")
                return t.state
            reason, details = steps.failure_reason(err)
            t.event(EventType.DEPLOYMENT_FAILED, f"deployment failed: {reason}", **details)
            # The record's message stays one line; the event above keeps the logs.
            reason = str(details.get("reason") or reason.splitlines()[0])
            if dep.config.rollback_on_failure or self._undone_always(err):
                await self._undo(t, DeploymentStatus.ROLLED_BACK, f"rolled back: {reason}")
            else:
                t.status(
                    DeploymentStatus.FAILED,
                    f"failed (rollback_on_failure is off; left as it failed): {reason}",
                )
            return t.state
        if self._cancel_requested_by is not None:
            # The cancel arrived after the last step finished: the deployment is done.
            t.event(
                EventType.DEPLOYMENT_CANCELLED, "cancel arrived after completion; nothing undone"
            )
        t.progress(100, "deployment completed")
        t.status(DeploymentStatus.COMPLETED, "deployment completed")
        t.event(EventType.DEPLOYMENT_COMPLETED, f"revision {dep.revision} is serving")
        return t.state

    def _stopped(self, t: Tracker) -> None:
        """The steps were stopped: by an abort or the deadline (their failure), else by a cancel.

        A cancel is the operator's, or the workflow's own; the caller raises CancelledError.

        Raises:
            ApplicationError: ``Aborted`` or ``ProgressDeadlineExceeded``.
        """
        t.in_flow = False
        if self._aborted_by is not None and self._cancel_requested_by is None:
            raise ApplicationError(
                f"aborted by {self._aborted_by}",
                {"reason": f"aborted by {self._aborted_by}"},
                type="Aborted",
                non_retryable=True,
            ) from None
        if self._deadline_hit is not None and self._cancel_requested_by is None:
            raise ApplicationError(
                f"progress deadline exceeded: {self._deadline_hit} ({t.deployment.message})",
                {"reason": "progress deadline exceeded"},
                type="ProgressDeadlineExceeded",
                non_retryable=True,
            ) from None
        if self._cancel_requested_by is None:
            # The workflow itself was cancelled (parent or operator): undo just the same.
            self._cancel_requested_by = "temporal"
            t.event(EventType.CANCEL_REQUESTED, "workflow cancellation requested")

    def steps_stopped(self) -> str | None:
        """Why the steps stopped (cancel, abort, deadline, a failed step), None while they run.

        Once they have, the undo runs or is about to: a steer (promote, pause, resume, abort)
        is refused, or it would be answered and recorded, then ignored.
        """
        return (
            (self._cancel_requested_by and f"it was cancelled by {self._cancel_requested_by}")
            or (self._aborted_by and f"it was aborted by {self._aborted_by}")
            or (self._deadline_hit and "its progress deadline stopped it")
            or (self._task is not None and self._task.done() and "its steps ended")
            or None
        )

    def _undone_always(self, err: Exception) -> bool:
        """True for an operator's abort and a blue-green promotion that timed out.

        Both say the new revision is not wanted, not that it failed: it goes even with
        ``rollback_on_failure`` off (it used to stay, the canary routed at its weight, while the
        abort answered "traffic back to stable").
        """
        wanted_gone = self._aborted_by is not None or (
            isinstance(err, ApplicationError) and err.type in ("Aborted", "PromotionTimeout")
        )
        return wanted_gone and workflow.patched("abort-always-undoes")

    def request_abort(self, user_id: str) -> None:
        """Stop the steps; the deployment fails as aborted and rolls back (``abort`` updates)."""
        assert self.tracker is not None
        self._aborted_by = user_id
        self.tracker.in_flow = False
        self.tracker.event(EventType.ABORTED, f"abort requested by {user_id}", user=user_id)
        self.tracker.cancel_requested = True
        self.tracker.in_flow = self._task is not None and not self._task.done()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    @property
    def holding(self) -> bool:
        """True while the deployment waits on purpose (the progress deadline does not count it).

        A pause, an operator's promotion, a declared delay.
        """
        return False

    async def _watch_progress(self, t: Tracker, seconds: float) -> None:
        """Stop the steps once the deployment has not moved for ``seconds``, holds not counted.

        Moved: progress or an event, as Kubernetes' ``progressDeadlineSeconds``; ``execute`` turns
        the stop into a failure. One timer at a time: it is set again only when it fires.
        """
        while True:
            if self.holding:
                await workflow.wait_condition(lambda: not self.holding)
                t.moved_at = workflow.now()  # the clock starts again after a hold
            left = seconds - (workflow.now() - t.moved_at).total_seconds()
            if left <= 0:
                break
            # The timer also ends when a hold begins, so a hold shorter than it still counts out.
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(lambda: self.holding, timeout=timedelta(seconds=left))
        self._stop_at_deadline(t, f"no progress for {seconds:g}s")

    async def _watch_deadline(self, t: Tracker, seconds: float) -> None:
        """Before the patch "progress-deadline-idle": the deadline bounds the whole run."""
        await asyncio.sleep(seconds)
        self._stop_at_deadline(t, f"not done {seconds:g}s after it started")

    def _stop_at_deadline(self, t: Tracker, why: str) -> None:
        if self._task is not None and not self._task.done():
            self._deadline_hit = why
            t.cancel_requested = True  # so the steps stop even if the cancel meets a finishing step
            self._task.cancel()

    async def _unwind_whole(self, t: Tracker) -> None:
        """Unwind the undo to its end, whatever cancel comes (the Web UI's, the parent's close).

        A workflow cancel during the undo cancelled the undo step running, and with it the rest
        of the undo: the deployment ended ``failed``, half undone (old replicas not restored).
        Runs started before this change unwind as they did (in the run's task: its first step
        comes before other commands of the same task, such as the deadline timer's cancel).

        Raises:
            ActivityError: see :meth:`~workflows.steps.CompensationStack.unwind`.
        """
        if not workflow.patched(UNDO_WHOLE):
            await self.undo.unwind(t)
            return
        unwinding = asyncio.ensure_future(self.undo.unwind(t))
        told = False
        while True:
            try:
                await asyncio.shield(unwinding)
                return
            except asyncio.CancelledError:
                if not told:
                    told = True
                    t.event(
                        EventType.CANCEL_REQUESTED,
                        "workflow cancellation requested during the undo: the undo goes on",
                    )

    async def _undo(self, t: Tracker, final: DeploymentStatus, message: str) -> None:
        t.status(DeploymentStatus.ROLLING_BACK, f"{message}: undoing {len(self.undo.steps)} steps")
        t.event(EventType.ROLLBACK_STARTED, f"undoing {len(self.undo.steps)} steps")
        try:
            await self._unwind_whole(t)
        except (ActivityError, ApplicationError) as err:
            reason, details = steps.failure_reason(err)
            t.event(EventType.ROLLBACK_FAILED, f"rollback failed: {reason}", **details)
            t.status(DeploymentStatus.FAILED, f"{message}, then rollback failed: {reason}")
            return
        t.event(EventType.ROLLBACK_COMPLETED, "the project is back as it was before the deployment")
        if final == DeploymentStatus.CANCELLED:
            t.event(
                EventType.DEPLOYMENT_CANCELLED,
                f"cancelled by {self._cancel_requested_by}",
                user=self._cancel_requested_by,
            )
        t.status(final, message)
