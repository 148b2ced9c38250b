"""The client-side service both the API and the CLI use: workflow starts, updates and queries.

Refusals come back as :class:`MoorageError` subclasses that carry the HTTP status they map to.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

from temporalio.client import (
    Client,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError, FailureError
from temporalio.service import RPCError, RPCStatusCode

from activities.inputs import ListLabelledInput
from moorage import naming
from moorage.compose import (
    ComposeError,
    ComposePolicy,
    ProjectSpec,
    parse_compose,
    resolve_compose,
)
from moorage.models import (
    MIN_HEALTH_CHECK_INTERVAL_S,
    NAME_RE,
    Deployment,
    DeploymentEvent,
    DeploymentState,
    DeploymentStatus,
    DeployRequest,
    EventType,
    ProjectPublic,
    ServiceInstance,
    Strategy,
    other_request,
    reused_key_message,
)
from moorage.settings import Settings, replica_port_refusal
from workflows import search_attributes as sa
from workflows.inputs import (
    ApplyInput,
    CancelInput,
    DeployInput,
    ProjectState,
    RollbackInput,
    SteerInput,
)

QUERY_ERRORS = (RPCError, WorkflowQueryFailedError, WorkflowQueryRejectedError)
"""What a query of a workflow that cannot answer raises (its task failing, a handler error)."""

STEER_ACTIONS = ("promote", "pause", "resume", "abort")
COUNTED_WITHIN_S = 10.0
"""How long an admission waits for the visibility store to count the deployment it admitted."""


class MoorageError(Exception):
    """A refusal with the HTTP status it maps to."""

    status_code = 400

    def __init__(self, message: str, *, field: list[str | int] | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class NotFoundError(MoorageError):
    """Unknown project or deployment (or another tenant's)."""

    status_code = 404


class ConflictError(MoorageError):
    """The project is in no state for this request."""

    status_code = 409


class InvalidError(MoorageError):
    """The request is invalid."""

    status_code = 422


class LimitError(MoorageError):
    """A tenant limit is reached; the same request may succeed later."""

    status_code = 429


class UnavailableError(MoorageError):
    """A step the request ran failed (the engine or the router did not answer).

    Not the request's fault, and it may succeed later.
    """

    status_code = 503


_KINDS: dict[str, type[MoorageError]] = {
    "NotFound": NotFoundError,
    "Conflict": ConflictError,
    "Invalid": InvalidError,
}


def _check_name(value: str, what: str) -> None:
    if not NAME_RE.match(value):
        raise NotFoundError(f"{what} {value!r} not found")


def _refusal(err: WorkflowUpdateFailedError) -> MoorageError:
    cause: BaseException | None = err.cause
    while cause is not None and not isinstance(cause, ApplicationError):
        cause = cause.__cause__
    if isinstance(cause, ApplicationError) and cause.type in _KINDS:
        # The body's field at fault, when the refusal names one (see workflows.project._refuse).
        named = cause.details[0] if cause.details and isinstance(cause.details[0], dict) else {}
        field = named.get("field")
        return _KINDS[cause.type](
            cause.message, field=list(field) if isinstance(field, list) else None
        )
    if isinstance(cause, ApplicationError):
        # A refusal has one of the kinds above; anything else is a step that failed (a
        # reconcile's engine down): it answered 400, as if the request were wrong.
        return UnavailableError(cause.message)
    if isinstance(err.cause, FailureError):  # a step timed out, or was cancelled
        chain: list[str] = []
        link: BaseException | None = err.cause
        while link is not None:
            chain.append(str(getattr(link, "message", "") or link))
            link = link.__cause__
        return UnavailableError("a step failed: " + ": ".join(chain))
    return MoorageError(str(cause or err))


MAX_IDEMPOTENCY_KEY_CHARS = 200
"""Longest ``Idempotency-Key``: a project keeps 200 of them in its state."""


def check_idempotency_key(key: str | None) -> None:
    """Refuse an ``Idempotency-Key`` longer than :data:`MAX_IDEMPOTENCY_KEY_CHARS`.

    Raises:
        InvalidError: naming the key's field.
    """
    if key is not None and len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise InvalidError(
            f"Idempotency-Key: at most {MAX_IDEMPOTENCY_KEY_CHARS} characters",
            field=["header", "Idempotency-Key"],
        )


def refuse_other_request(key: str, known: Deployment, request: DeployRequest) -> None:
    """Refuse a request under the ``Idempotency-Key`` of a deployment it did not ask for.

    A repeat gets the deployment back; another request under the same key (another version or
    config: a reused key) got the first one's deployment back too, and never ran.

    Raises:
        InvalidError: naming the key's field.
    """
    if other_request(known, request):
        raise InvalidError(reused_key_message(key, known), field=["header", "Idempotency-Key"])


def check_deploy_request(request: DeployRequest) -> None:
    """What a new deployment may not ask, though the model takes it (its history must decode).

    Raises:
        InvalidError: ``health_check_interval`` is under ``MIN_HEALTH_CHECK_INTERVAL_S``.
    """
    if (
        request.strategy == Strategy.BLUE_GREEN
        and not request.auto_promote
        and request.blue_green_timeout < 1
    ):
        # It could only fail: the promotion's wait timed out at once, and green went.
        raise InvalidError(
            "blue_green_timeout: at least 1 s when auto_promote is off (the time an operator "
            "has to promote)",
            field=["body", "blue_green_timeout"],
        )
    if request.health_check_interval < MIN_HEALTH_CHECK_INTERVAL_S:
        # A replica gets retries x interval to get ready: at 1e-300, no time at all (nor the old
        # revision a rollback restores, which is waited for with the same interval).
        raise InvalidError(
            f"health_check_interval: at least {MIN_HEALTH_CHECK_INTERVAL_S} s",
            field=["body", "health_check_interval"],
        )
    if request.canary_steps == []:
        # Taken for "not given": the default plan ran (10%, a 30 s pause, 50%, 100%).
        raise InvalidError(
            "canary_steps: at least one step (leave it out for the default plan)",
            field=["body", "canary_steps"],
        )


class DeploymentService:
    """Projects and deployments of every tenant, on one Temporal namespace."""

    def __init__(self, client: Client, settings: Settings):
        self.client = client
        self.settings = settings
        self._admission: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    # --- tenant limits -------------------------------------------------------------------------

    async def active_deployments(self, tenant: str) -> int:
        """How many of the tenant's deployments run now.

        Counted from their strategy workflows in Temporal's visibility store.
        """
        from workflows.project import STRATEGY_WORKFLOWS

        types = ", ".join(f"'{name}'" for name in STRATEGY_WORKFLOWS.values())
        query = (
            f"{sa.TENANT_ID.name} = '{tenant}' AND ExecutionStatus = 'Running' "
            f"AND WorkflowType IN ({types})"
        )
        return (await self.client.count_workflows(query)).count

    async def _start_deployment(
        self, tenant: str, project: str, update: str, arg: DeployInput | RollbackInput
    ) -> Deployment:
        """Run the ``deploy`` / ``rollback`` update within ``max_active_deployments``.

        Admissions of one tenant are serialised, and each holds on until the visibility store
        counts the deployment it admitted (or that deployment ended), so the next admission sees
        it: exact within one API process; API processes side by side may each admit one past the
        limit.

        Raises:
            LimitError: the tenant runs ``max_active_deployments`` deployments already.
        """
        limit = self.settings.max_active_deployments
        async with self._admission[tenant]:
            running = await self.active_deployments(tenant)
            if running >= limit:
                raise LimitError(
                    f"tenant {tenant!r} runs {running} deployments, its limit "
                    f"(MOORAGE_MAX_ACTIVE_DEPLOYMENTS) is {limit}: try again when one ends"
                )
            dep: Deployment = await self._update(tenant, project, update, arg, Deployment)
            await self._until_counted(tenant, dep)
        return dep

    async def _until_counted(self, tenant: str, dep: Deployment) -> None:
        workflow_id = naming.deployment_workflow_id(tenant, dep.id)
        deadline = time.monotonic() + COUNTED_WITHIN_S
        while time.monotonic() < deadline:
            if (await self.client.count_workflows(f"WorkflowId = '{workflow_id}'")).count:
                return
            state = await self.get_state(tenant, dep.id)
            if state.deployment.status.terminal:
                return
            await asyncio.sleep(0.05)

    # --- projects ------------------------------------------------------------------------------

    def _project(self, tenant: str, project: str) -> WorkflowHandle[Any, Any]:
        _check_name(project, "project")
        return self.client.get_workflow_handle(naming.project_workflow_id(tenant, project))

    async def _query_project(
        self, tenant: str, project: str, query: str, *args: Any, result_type: type
    ) -> Any:
        try:
            return await self._project(tenant, project).query(query, *args, result_type=result_type)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise NotFoundError(f"project {project!r} not found") from exc
            raise

    async def _update(
        self, tenant: str, project: str, update: str, arg: Any, result_type: type | None
    ) -> Any:
        try:
            return await self._project(tenant, project).execute_update(
                update, arg, result_type=result_type
            )
        except WorkflowUpdateFailedError as err:
            raise _refusal(err) from err
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise NotFoundError(f"project {project!r} not found") from exc
            raise

    def policy(self, tenant: str) -> ComposePolicy:
        """The tenant's Compose policy (``MOORAGE_TENANT_POLICIES``)."""
        return self.settings.policy_for(tenant)

    def _check_published_ports(self, spec: ProjectSpec) -> None:
        """Refuse a route's published port inside ``MOORAGE_REPLICA_PORTS``.

        A Compose ``published`` port is the route's listen port. Inside the replicas' range it
        could take the port of a stopped replica, whose restart would then fail. The worker's
        router refuses it too, under the worker's settings (``RouterPortReserved``); refused here,
        under this process's, nothing has changed yet.

        Raises:
            ComposeError: naming the service and ``ports``.
        """
        try:
            replica_ports = self.settings.replica_port_range()
        except ValueError:  # the worker refuses to start with it; nothing to check against
            return
        for service in spec.services:
            port = service.route_port()
            why = replica_port_refusal(port.published if port else None, replica_ports)
            if why is not None:
                raise ComposeError(why, service=service.name, key="ports")

    async def apply_project(
        self,
        tenant: str,
        project: str,
        compose: str,
        variables: dict[str, str] | None = None,
    ) -> ProjectPublic:
        """Create the project (if new) and store its Compose text, ``${VAR}`` substituted.

        Raises:
            InvalidError: the project id or the Compose text is refused under the tenant's policy
                (after interpolation; nothing is changed).
        """
        if not NAME_RE.match(project):
            raise InvalidError(
                "project ids are 1-40 lowercase letters, digits and dashes, "
                "starting with a letter or digit",
                field=["path", "project_id"],
            )
        policy = self.policy(tenant)
        try:
            compose = resolve_compose(compose, variables)
            self._check_published_ports(
                parse_compose(compose, policy=policy, route_address=self.settings.router_bind)
            )
        except ComposeError as exc:
            field: list[str | int] = ["body", "compose"]
            if exc.service:
                field.append(exc.service)
            if exc.key:
                field.append(exc.key)
            raise InvalidError(str(exc), field=field) from exc
        await self.client.start_workflow(
            "Project",
            ProjectState(
                tenant_id=tenant,
                project_id=project,
                retained_revisions=self.settings.retained_revisions,
            ),
            id=naming.project_workflow_id(tenant, project),
            task_queue=self.settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            search_attributes=sa.typed((sa.PROJECT_ID, project), (sa.TENANT_ID, tenant)),
            static_summary=f"project {project} (tenant {tenant})",
        )
        # Its answer has no texts (a worker before this change answered them all).
        await self._update(
            tenant, project, "apply", ApplyInput(compose=compose, policy=policy), None
        )
        return await self.get_project(tenant, project)

    async def get_project(self, tenant: str, project: str) -> ProjectPublic:
        """The project.

        Raises:
            NotFoundError: no such project for this tenant.
        """
        result: ProjectPublic = await self._query_project(
            tenant, project, "project", result_type=ProjectPublic
        )
        return result

    # --- deployments ---------------------------------------------------------------------------

    async def deploy(
        self,
        tenant: str,
        user: str,
        project: str,
        request: DeployRequest,
        idempotency_key: str | None = None,
    ) -> Deployment:
        """Start a deployment of the project's Compose text; returns at once (status pending).

        Raises:
            NotFoundError: no such project.
            ConflictError: a deployment is running for this project.
            InvalidError: the project has no Compose text, the strategy is not available, or
                ``health_check_interval`` is under ``MIN_HEALTH_CHECK_INTERVAL_S``.
            LimitError: the tenant runs as many deployments as it may.
        """
        check_idempotency_key(idempotency_key)
        if idempotency_key:
            # A repeated request gets its deployment back, whatever the tenant runs meanwhile.
            known: Deployment | None = await self._query_project(
                tenant,
                project,
                "idempotent",
                idempotency_key,
                result_type=Deployment | None,  # type: ignore[arg-type]  # a union decodes fine
            )
            if known is not None:
                refuse_other_request(idempotency_key, known, request)
                # As it is now: the project's record said pending, 0%, until its end.
                return await self._now(tenant, known)
        check_deploy_request(request)
        return await self._start_deployment(
            tenant,
            project,
            "deploy",
            DeployInput(
                request=request,
                user_id=user,
                idempotency_key=idempotency_key,
                policy=self.policy(tenant),
            ),
        )

    async def list_deployments(self, tenant: str, project: str) -> list[Deployment]:
        """A project's deployments, newest first.

        Raises:
            NotFoundError: no such project.
        """
        result: list[Deployment] = await self._query_project(
            tenant, project, "deployments", result_type=list[Deployment]
        )
        # The running one as it is now (the project's record said pending, 0%, until its end).
        return [await self._now(tenant, d) for d in result]

    async def _now(self, tenant: str, dep: Deployment) -> Deployment:
        """``dep`` as its strategy workflow has it while it runs (the project's record else)."""
        if dep.status.terminal:
            return dep
        try:
            live = await self._live(tenant, dep.id)
        except QUERY_ERRORS:
            # A strategy workflow that cannot answer (its task failing) must not make the list
            # or a cancel fail: the project's record, then.
            return dep
        return live.deployment if live is not None else dep

    async def _live(self, tenant: str, deployment_id: str) -> DeploymentState | None:
        """A running deployment's state from its strategy workflow; None before it started.

        The project's record of it says ``pending`` until it ends.
        """
        handle = self.client.get_workflow_handle(
            naming.deployment_workflow_id(tenant, deployment_id)
        )
        try:
            live: DeploymentState | None = await handle.query(
                "state",
                result_type=DeploymentState | None,  # type: ignore[arg-type]  # a union decodes fine
            )
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return None  # the strategy workflow has not started yet
            raise
        return live

    async def get_state(self, tenant: str, deployment_id: str) -> DeploymentState:
        """A deployment's record, events and instances (live from its workflow while it runs).

        Raises:
            NotFoundError: no such deployment for this tenant.
        """
        parts = naming.split_deployment_id(deployment_id)
        if parts is None:
            raise NotFoundError(f"deployment {deployment_id!r} not found")
        project, _ = parts
        try:
            state: DeploymentState | None = await self._query_project(
                tenant,
                project,
                "deployment",
                deployment_id,
                result_type=DeploymentState | None,  # type: ignore[arg-type]  # a union decodes fine
            )
        except NotFoundError:
            state = None
        if state is None:
            raise NotFoundError(f"deployment {deployment_id!r} not found")
        if state.deployment.status.terminal:
            return state
        try:
            live = await self._live(tenant, deployment_id)
        except QUERY_ERRORS:
            return state  # a strategy workflow that cannot answer: the project's record
        if live is None:
            return state
        # The project's request event first, then the strategy's own log.
        live.events = [
            e for e in state.events if e.details.get("phase") == "requested"
        ] + live.events
        return live

    async def get_deployment(self, tenant: str, deployment_id: str) -> Deployment:
        """A deployment's record.

        Raises:
            NotFoundError: no such deployment.
        """
        return (await self.get_state(tenant, deployment_id)).deployment

    async def events(self, tenant: str, deployment_id: str) -> list[DeploymentEvent]:
        """A deployment's event log, oldest first.

        Raises:
            NotFoundError: no such deployment.
        """
        return (await self.get_state(tenant, deployment_id)).events

    async def instances(self, tenant: str, deployment_id: str) -> list[ServiceInstance]:
        """The containers a deployment made.

        Raises:
            NotFoundError: no such deployment.
        """
        return (await self.get_state(tenant, deployment_id)).instances

    async def cancel(self, tenant: str, user: str, deployment_id: str) -> Deployment:
        """Cancel a running deployment.

        Raises:
            NotFoundError: no such deployment.
            ConflictError: the deployment is not running, or is being undone already.
        """
        project = self._project_of(deployment_id)
        # Its undo goes on whatever comes: a cancel then was answered 202 and did nothing. An
        # aborted one is still in_progress until its step stops; its rollback follows.
        state = await self.get_state(tenant, deployment_id)
        if state.deployment.status == DeploymentStatus.ROLLING_BACK:
            raise ConflictError(
                f"cannot cancel: deployment {deployment_id} is rolling_back (its undo goes on)"
            )
        if not state.deployment.status.terminal and any(
            e.event_type == EventType.ABORTED for e in state.events
        ):
            raise ConflictError(
                f"cannot cancel: deployment {deployment_id} was aborted (its rollback follows)"
            )
        result: Deployment = await self._update(
            tenant,
            project,
            "cancel",
            CancelInput(deployment_id=deployment_id, user_id=user),
            Deployment,
        )
        return await self._now(tenant, result)

    async def rollback(
        self, tenant: str, user: str, deployment_id: str, to_revision: int | None = None
    ) -> Deployment:
        """Start a deployment that brings back the previous (or the given) successful revision.

        Raises:
            NotFoundError: no such deployment.
            ConflictError: a deployment is running, or the target is what serves already.
            InvalidError: the target revision is not retained.
            LimitError: the tenant runs as many deployments as it may.
        """
        project = self._project_of(deployment_id)
        return await self._start_deployment(
            tenant,
            project,
            "rollback",
            RollbackInput(
                deployment_id=deployment_id,
                user_id=user,
                to_revision=to_revision,
                policy=self.policy(tenant),
            ),
        )

    async def steer(self, tenant: str, user: str, deployment_id: str, action: str) -> str:
        """``promote`` / ``pause`` / ``resume`` / ``abort`` a running deployment.

        Raises:
            NotFoundError: no such deployment.
            ConflictError: the deployment is in no state for it (the message says why).
            InvalidError: unknown action.
        """
        if action not in STEER_ACTIONS:
            raise InvalidError(f"unknown action {action!r} (one of {', '.join(STEER_ACTIONS)})")
        state = await self.get_state(tenant, deployment_id)
        dep = state.deployment
        if dep.status.terminal or dep.status == DeploymentStatus.ROLLING_BACK:
            raise ConflictError(
                f"cannot {action}: deployment {deployment_id} is {dep.status.value}"
            )
        if dep.status == DeploymentStatus.PENDING:
            raise ConflictError(f"cannot {action}: deployment {deployment_id} has not started yet")
        if action in ("pause", "resume") and dep.strategy != Strategy.CANARY:
            raise ConflictError(f"cannot {action}: only canary deployments pause and resume")
        if action == "abort" and dep.strategy != Strategy.CANARY:
            raise ConflictError(
                "cannot abort: only canary deployments abort (cancel works for every strategy)"
            )
        if action == "promote" and dep.strategy not in (Strategy.BLUE_GREEN, Strategy.CANARY):
            raise ConflictError(
                f"cannot promote: a {dep.strategy.value} deployment has nothing to promote"
            )
        handle = self.client.get_workflow_handle(
            naming.deployment_workflow_id(tenant, deployment_id)
        )
        try:
            result: str = await handle.execute_update(
                action, SteerInput(user_id=user), result_type=str
            )
        except WorkflowUpdateFailedError as err:
            raise _refusal(err) from err
        except RPCError as exc:
            if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
                raise ConflictError(
                    f"cannot {action}: deployment {deployment_id} is no longer running"
                ) from exc
            raise
        return result

    async def reconcile(self, tenant: str, user: str, project: str) -> list[DeploymentEvent]:
        """Remove the project's labelled containers that no deployment owns.

        Raises:
            NotFoundError: no such project.
            ConflictError: a deployment is running for it.
        """
        result: list[DeploymentEvent] = await self._update(
            tenant, project, "reconcile", user, list[DeploymentEvent]
        )
        return result

    async def reconcile_all(self, tenant: str | None = None) -> list[DeploymentEvent]:
        """Run ReconcileAll now (what the schedule runs) for one tenant or all; operators only."""
        from workflows.reconcile import WORKFLOW_ID

        result: list[DeploymentEvent] = await self.client.execute_workflow(
            "ReconcileAll",
            ListLabelledInput(tenant=tenant),
            id=f"{WORKFLOW_ID}-manual-{tenant or 'all'}",
            task_queue=self.settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            result_type=list[DeploymentEvent],
        )
        return result

    @staticmethod
    def _project_of(deployment_id: str) -> str:
        parts = naming.split_deployment_id(deployment_id)
        if parts is None or not NAME_RE.match(parts[0]):
            raise NotFoundError(f"deployment {deployment_id!r} not found")
        return parts[0]
