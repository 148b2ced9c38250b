"""The project workflow: one long-lived entity per project.

It holds the Compose text the next deployment rolls out, the retained revisions, the deployment
history (records, events and instances, so they outlive the strategy workflows' retention) and the
one active deployment. It lets only one deployment run at a time: a second is refused (HTTP 409).
Each deployment runs as a child strategy workflow.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import timedelta

from pydantic import BaseModel
from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    FailureError,
)

with workflow.unsafe.imports_passed_through():
    from pydantic_core import to_json

    from moorage import naming
    from moorage.compose import (
        UNRESTRICTED,
        ComposeError,
        ComposePolicy,
        ProjectSpec,
        parse_compose,
    )
    from moorage.models import (
        Deployment,
        DeploymentConfig,
        DeploymentEvent,
        DeploymentState,
        DeploymentStatus,
        EventType,
        ProjectPublic,
        RevisionInfo,
        Strategy,
        other_request,
        reused_key_message,
    )
    from workflows import replicas, upkeep
    from workflows import search_attributes as sa
    from workflows.inputs import (
        ApplyInput,
        CancelInput,
        DeployInput,
        ProjectState,
        RevisionRef,
        RollbackInput,
        StrategyInput,
    )
    from workflows.planning import SurgeError, resolve_surge
    from workflows.recreate import RecreateWorkflow
    from workflows.rolling import RollingUpdateWorkflow

DELETE_ROUTES = "delete-routes-not-served"
"""Patch: after a completed deployment, delete the routes of services the revision does not route.

Project runs that began before it keep those routes to their end (their next continue-as-new
starts a run that deletes them).
"""

MAX_DEPLOYMENTS_KEPT = 100
MAX_IDEMPOTENCY_KEYS = 200
HISTORY_LIMIT = 5_000
APPLY_HISTORY_CAP = 10 * 2**20
"""History size (bytes) past which an apply is refused while a deployment runs (the history
continues as new only between deployments; Temporal warns at 10 MB and ends a run at 50 MB)."""

STRATEGY_WORKFLOWS: dict[Strategy, str] = {
    Strategy.RECREATE: "Recreate",
    Strategy.ROLLING_UPDATE: "RollingUpdate",
    Strategy.BLUE_GREEN: "BlueGreen",
    Strategy.CANARY: "Canary",
}
"""Strategy → pinned workflow name of its child workflow."""

_ = (RecreateWorkflow, RollingUpdateWorkflow)  # imported so the sandbox validates them alongside


STATE_BUDGET = "project-state-budget"
"""Patch: the project's state is kept under :data:`STATE_BUDGET_BYTES`."""
STATE_BUDGET_BYTES = 1536 * 1024
"""Most bytes the project's state may take as JSON: it travels whole through every
continue-as-new, which Temporal caps at 2 MiB (the project's workflow then fails every task)."""
KEPT_WHOLE = 10
"""Newest deployment records whose events keep their logs whatever the budget."""


def _slim(event: DeploymentEvent) -> None:
    """An event without its logs: the first line of its message, no log tails in its details."""
    first, _, rest = event.message.partition("\n")
    if rest or len(first) > 500:
        event.message = first[:500] + " … (logs dropped: the project's state is full)"
    event.details = {k: v for k, v in event.details.items() if k not in ("logs", "health_output")}


def fit_state(s: ProjectState, budget: int = STATE_BUDGET_BYTES) -> None:
    """Bring the project's state under ``budget``.

    First the logs of all but the newest :data:`KEPT_WHOLE` deployment records go, then those
    of all but the newest record, then the oldest records (never the newest).
    """
    for keep in (KEPT_WHOLE, 1):
        if json_bytes(s) <= budget:
            return
        for record in s.deployments[:-keep]:
            for event in record.events:
                _slim(event)
    size = json_bytes(s)
    while size > budget and len(s.deployments) > 1:
        size -= json_bytes(s.deployments.pop(0)) + 1


def json_bytes(model: BaseModel) -> int:
    """Bytes of ``model`` as JSON (UTF-8), as it travels in a payload."""
    return len(model.model_dump_json().encode())


RETAINED_COMPOSE_BYTES = 512 * 1024
"""Most bytes of Compose text the retained revisions hold together. The project's state travels
whole through every continue-as-new and its revisions in every answer about the project; Temporal
caps a payload at 2 MiB, and ten revisions of a 256 KiB file passed it (the project's workflow
then failed every task)."""


def compose_bytes(text: str) -> int:
    """Bytes of a Compose text as it travels: a JSON string (UTF-8), its escapes counted.

    A newline is two bytes there: a 256 KiB file of blank lines is 512 KiB (counted raw, two
    such revisions fitted the budget, and the project's state passed 2 MiB with them).
    """
    return len(to_json(text))


def raw_bytes(text: str) -> int:
    """Bytes of a Compose text in UTF-8 (how runs before patch ``RETAINED_JSON`` counted)."""
    return len(text.encode())


RETAINED_JSON = "retained-revisions-json"
"""Patch: retained revisions are counted as JSON strings (:func:`compose_bytes`)."""


def retained_bytes(
    revisions: list[RevisionInfo], measure: Callable[[str], int] = compose_bytes
) -> int:
    """Bytes of Compose text the revisions hold (:func:`compose_bytes`)."""
    return sum(measure(r.compose) for r in revisions)


def retain_within(
    revisions: list[RevisionInfo],
    budget: int,
    measure: Callable[[str], int] = compose_bytes,
) -> list[RevisionInfo]:
    """The newest revisions whose Compose texts fit ``budget`` together; always the newest."""
    kept: list[RevisionInfo] = []
    used = 0
    for rev in reversed(revisions):
        used += measure(rev.compose)
        if kept and used > budget:
            break
        kept.append(rev)
    return kept[::-1]


def _surge_refusal(config: DeploymentConfig, spec: ProjectSpec) -> str | None:
    """Why ``config``'s max_surge and max_unavailable cannot roll ``spec`` (None: they can)."""
    for service in spec.services:
        try:
            resolve_surge(config.max_surge, config.max_unavailable, service.replicas)
        except SurgeError as exc:
            return f"service {service.name!r}: {exc}"
    return None


DOCKER_HEALTHCHECK_INTERVAL_S = 30.0
"""Docker's healthcheck interval when a Compose healthcheck gives a test but no interval."""


def _health_refusal(config: DeploymentConfig, spec: ProjectSpec) -> str | None:
    """Why a service can never be healthy in time under ``config`` (None: it can).

    Docker runs a healthcheck's first check one ``interval`` after the start: one of 90 s under
    the default window (60 checks 1 s apart) failed every deployment, after the whole window.
    A health gate no shorter than the progress deadline (its delay and ``min_ready_seconds``)
    failed every deployment at the deadline, 15 minutes in by default.
    """
    for service in spec.services:
        delay, retries = replicas.health_delay_and_retries(config, service)
        if delay + service.min_ready_seconds >= config.progress_deadline:
            # A health gate records nothing until it ends, and ends no sooner than this.
            return (
                f"service {service.name!r}: its health gate takes at least "
                f"{delay + service.min_ready_seconds:g}s (health_check_delay + "
                f"min_ready_seconds), no shorter than progress_deadline "
                f"({config.progress_deadline:g}s): every deployment would fail at the deadline; "
                "raise progress_deadline or shorten the wait"
            )
        check = service.healthcheck
        if (
            service.probe is not None  # the probe decides, not Docker's healthcheck
            or check is None
            or check.disable
            or not check.test  # the image's healthcheck (if it has one): not known here
            or check.test == ["NONE"]
            or check.start_period_s  # Docker 25+ checks every 5 s during a start period
        ):
            continue
        interval = check.interval_s or DOCKER_HEALTHCHECK_INTERVAL_S
        window = delay + retries * config.health_check_interval  # healthy by then, at the latest
        if interval >= window:
            return (
                f"service {service.name!r}: its healthcheck.interval ({interval:g}s) is no "
                f"shorter than the time its replicas get to be healthy ({window:g}s: "
                "health_check_delay + health_check_retries x health_check_interval): Docker's "
                "first check would come too late; shorten the interval or give more time"
            )
    return None


def _mode_change_refusal(serving: ProjectSpec, target: ProjectSpec) -> str | None:
    """Why a blue-green or canary cannot roll ``target`` out: a route it changes the mode of.

    Both serve the two revisions on one route for a while (blue until the switch, stable beside
    the canary), and the route switches its mode at the first step: a serving revision that
    speaks TCP only would be answered as HTTP until then.
    """
    changes = [
        f"{new.name} {old.route_mode} → {new.route_mode}"
        for new in target.services
        if new.route_port() is not None
        and new.name in serving.names
        and (old := serving.service(new.name)).route_port() is not None
        and old.route_mode != new.route_mode
    ]
    if not changes:
        return None
    return (
        f"the revision changes the mode of its routes ({', '.join(changes)}; x-moorage.route): "
        "blue-green and canary serve both revisions on one route, which switches its mode at "
        "the first step; deploy it with rolling_update or recreate"
    )


def _refuse(message: str, kind: str, *loc: str) -> ApplicationError:
    """A refusal the API maps to a status: ``Conflict`` 409, ``NotFound`` 404, ``Invalid`` 422.

    ``loc``: the request's field at fault (``"body", "strategy"``), for the answer's ``loc``.
    """
    details = [{"field": list(loc)}] if loc else []
    return ApplicationError(message, *details, type=kind, non_retryable=True)


def _checked(
    compose: str, policy: ComposePolicy, prefix: str, *, stored: bool = False
) -> ProjectSpec:
    """The project Compose text describes; refused (``Invalid``) if the policy does not allow it.

    ``stored``: a revision's text, deployed under earlier rules (see ``parse_compose``).
    """
    try:
        return parse_compose(compose, policy=policy, stored=stored)
    except ComposeError as exc:
        raise _refuse(prefix + str(exc), "Invalid") from exc


@workflow.defn(name="Project")
class ProjectWorkflow:
    """Entity workflow of one project."""

    @workflow.init
    def __init__(self, state: ProjectState) -> None:
        self.s: ProjectState | None = state
        self._child: workflow.ChildWorkflowHandle[object, DeploymentState] | None = None
        self._cancel_pending: str | None = None
        """Who cancelled the active deployment before its strategy workflow started."""
        self._reconciling = False
        self._reconcile_requested = False
        self._reconcile_by = "schedule"
        """Who asked for the pass ``_reconcile_requested`` asks for."""
        self._deletes_routes = False

    @property
    def state(self) -> ProjectState:
        """The project state (set at the start of run)."""
        assert self.s is not None
        return self.s

    @workflow.run
    async def run(self, state: ProjectState) -> None:
        """Run deployments one at a time, forever; continue-as-new when history grows."""
        # Asked once, first: a run that began before routes were deleted keeps not deleting them
        # to its end (a patch asked only where a deletion is due would be answered by the run's
        # first such point, which an older code may have passed without asking).
        self._deletes_routes = workflow.patched(DELETE_ROUTES)
        while True:
            await workflow.wait_condition(
                lambda: (
                    self.state.active_id is not None
                    or self._should_continue()
                    or (self._reconcile_requested and not self._reconciling)
                )
            )
            if self._reconcile_requested and self.state.active_id is None and not self._reconciling:
                self._reconcile_requested = False
                self._reconciling = True
                by, self._reconcile_by = self._reconcile_by, "schedule"
                try:
                    await upkeep.reconcile(self.state, by)
                except (ActivityError, ApplicationError) as err:
                    # An engine down past the steps' retries must not end the project's workflow
                    # (and with it the project): the next scheduled pass tries again.
                    upkeep.log_reconcile_failure(self.state, err)
                finally:
                    self._reconciling = False
                continue
            if self.state.active_id is None:
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self.state)
            await self._run_active()

    def _should_continue(self) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested() or info.get_current_history_length() > HISTORY_LIMIT
        )

    # --- queries -------------------------------------------------------------------------------

    @workflow.query(name="project")
    def project(self) -> ProjectPublic:
        """The project as clients see it."""
        s = self.state
        services: list[str] = []
        routed: set[str] = set()
        # A route is listed while a revision that routes it serves, rolls out, or is the one
        # applied: the serving revision may route a service the applied text dropped (or a
        # rollback brought back), and its route serves.
        texts = [s.compose, s.current.compose if s.current else None, s.active_compose]
        for i, text in enumerate(texts):
            if not text or text in texts[:i]:
                continue
            try:
                spec = parse_compose(text, policy=UNRESTRICTED, stored=True)
            except ComposeError:
                continue
            if i == 0:
                services = spec.names
            routed |= spec.routed
        return ProjectPublic(
            id=s.project_id,
            tenant_id=s.tenant_id,
            compose=s.compose,
            services=services,
            current_revision=s.current.revision if s.current else None,
            current_version=s.current.version if s.current else None,
            active_deployment_id=s.active_id,
            # The services those revisions route (a route no revision has is not listed).
            routes={name: url for name, url in s.routes.items() if name in routed},
            revisions=s.revisions,
        )

    @workflow.query(name="deployments")
    def deployments(self) -> list[Deployment]:
        """Deployment records, newest first."""
        return [d.deployment for d in reversed(self.state.deployments)]

    @workflow.query(name="deployment")
    def deployment(self, deployment_id: str) -> DeploymentState | None:
        """One deployment's record, events and instances (None when unknown)."""
        return self._find(deployment_id)

    @workflow.query(name="idempotent")
    def idempotent(self, key: str) -> Deployment | None:
        """The deployment an ``Idempotency-Key`` registered, if it did."""
        dep_id = self.state.idempotency.get(key)
        found = self._find(dep_id) if dep_id else None
        return found.deployment if found else None

    # --- updates -------------------------------------------------------------------------------

    @workflow.update(name="apply")
    def apply(self, inp: ApplyInput) -> ProjectPublic:
        """Store the Compose text the next deployment rolls out.

        Answers the project without texts (``compose`` None, no ``revisions``; the API asks for
        the project after): the answer is kept in the history, and the whole project (every
        retained revision's text) made each apply cost up to a few MB there while a deployment
        runs (the history continues as new only between). An API from before this change
        decodes it still.
        """
        self.state.compose = inp.compose
        return self.project().model_copy(update={"compose": None, "revisions": []})

    @apply.validator
    def _validate_apply(self, inp: ApplyInput) -> None:
        size = workflow.info().get_current_history_size()
        if self.state.active_id is not None and size > APPLY_HISTORY_CAP:
            raise _refuse(
                f"the project's history holds {size // 2**20} MiB while deployment "
                f"{self.state.active_id} runs: apply again once it has ended (each apply adds "
                "its text; Temporal ends a workflow whose history passes 50 MB)",
                "Conflict",
            )
        _checked(inp.compose, inp.policy or ComposePolicy(), "")

    @workflow.update(name="deploy")
    def deploy(self, inp: DeployInput) -> Deployment:
        """Register a deployment of the stored Compose text; it starts right away."""
        s = self.state
        if inp.idempotency_key and inp.idempotency_key in s.idempotency:
            found = self._find(s.idempotency[inp.idempotency_key])
            assert found is not None
            return found.deployment
        assert s.compose is not None
        revision = s.next_revision
        dep = self._register(
            revision=revision,
            version=inp.request.version or f"r{revision}",
            compose=s.compose,
            user_id=inp.user_id,
            config=inp.request,
        )
        if inp.idempotency_key:
            s.idempotency[inp.idempotency_key] = dep.id
            while len(s.idempotency) > MAX_IDEMPOTENCY_KEYS:
                s.idempotency.pop(next(iter(s.idempotency)))
        return dep

    @deploy.validator
    def _validate_deploy(self, inp: DeployInput) -> None:
        s = self.state
        if inp.idempotency_key and inp.idempotency_key in s.idempotency:
            used_by = s.idempotency[inp.idempotency_key]
            if self._find(used_by) is None:
                # Its record is gone (a project keeps the last MAX_DEPLOYMENTS_KEPT): neither
                # the same deployment, nor a second one for a request that may be a retry. The
                # handler used to fail on it, and with it the project's workflow task, forever.
                raise _refuse(
                    f"Idempotency-Key {inp.idempotency_key!r} was used by deployment {used_by}, "
                    f"which this project no longer keeps (the last {MAX_DEPLOYMENTS_KEPT}): "
                    "a new request needs a new key",
                    "Conflict",
                )
            known = self._find(used_by)
            if known is not None and other_request(known.deployment, inp.request):
                # Two requests under one key at once: both passed the API's check.
                raise _refuse(
                    reused_key_message(inp.idempotency_key, known.deployment),
                    "Invalid",
                    "header",
                    "Idempotency-Key",
                )
            return
        if s.compose is None:
            raise _refuse("the project has no Compose file yet: PUT it first", "Invalid")
        # No policy: the stored text passed its tenant's when it was applied.
        spec = _checked(
            s.compose, inp.policy or UNRESTRICTED, "the stored Compose file no longer passes: "
        )
        if inp.request.strategy not in STRATEGY_WORKFLOWS:
            raise _refuse(
                f"strategy {inp.request.strategy.value!r} is not available yet "
                f"(available: {', '.join(x.value for x in STRATEGY_WORKFLOWS)})",
                "Invalid",
                "body",
                "strategy",
            )
        if inp.request.strategy == Strategy.ROLLING_UPDATE:
            why = _surge_refusal(inp.request, spec)
            if why is not None:
                raise _refuse(why, "Invalid", "body", "max_surge")
        why = _health_refusal(inp.request, spec)
        if why is not None:
            raise _refuse(why, "Invalid")
        if inp.request.strategy in (Strategy.BLUE_GREEN, Strategy.CANARY) and s.current:
            serving = _checked(
                s.current.compose,
                UNRESTRICTED,
                "the serving revision's Compose file no longer parses: ",
                stored=True,
            )
            why = _mode_change_refusal(serving, spec)
            if why is not None:
                raise _refuse(why, "Invalid", "body", "strategy")
        self._refuse_if_active()

    @workflow.update(name="rollback")
    def rollback(self, inp: RollbackInput) -> Deployment:
        """Register a deployment that brings back a retained revision."""
        last = self._find(inp.deployment_id)
        assert last is not None
        # Rollbacks registered before the patch took, for a later deployment, the revision
        # before the serving one.
        target = self._rollback_target(
            inp, later_ok=workflow.patched("rollback-of-a-later-deployment")
        )
        serving = self._find(self.state.current.deployment_id) if self.state.current else None
        if (
            serving is not None
            and last.deployment.revision < serving.deployment.revision
            and workflow.patched("rollback-config-of-serving")
        ):
            # An older deployment named with to_revision: the rollback replaces what serves, as
            # the serving deployment would (the older one's recreate, its rollback_on_failure,
            # were taken: a roll done as a recreate, with downtime).
            last = serving
        # A rollback keeps zero downtime where the deployment had it: rolling unless it recreated.
        strategy = (
            Strategy.RECREATE
            if last.deployment.strategy == Strategy.RECREATE
            else Strategy.ROLLING_UPDATE
        )
        config = last.deployment.config.model_copy(update={"strategy": strategy})
        if (
            strategy == Strategy.ROLLING_UPDATE
            and _surge_refusal(
                config, parse_compose(target.compose, policy=UNRESTRICTED, stored=True)
            )
            and workflow.patched("rollback-surge-fits")
        ):
            # The surge the deployment asked for cannot roll this revision (other replica
            # counts; or a blue-green's or canary's, never checked): the defaults can. Such a
            # rollback used to be accepted, then fail at once.
            config = config.model_copy(
                update={
                    "max_surge": DeploymentConfig.model_fields["max_surge"].default,
                    "max_unavailable": DeploymentConfig.model_fields["max_unavailable"].default,
                }
            )
        dep = self._register(
            revision=self.state.next_revision,
            version=target.version,
            compose=target.compose,
            user_id=inp.user_id,
            config=config,
            rollback_version=target.version,
        )
        return dep

    @rollback.validator
    def _validate_rollback(self, inp: RollbackInput) -> None:
        if self._find(inp.deployment_id) is None:
            raise _refuse(f"deployment {inp.deployment_id!r} not found", "NotFound")
        self._refuse_if_active()
        target = self._rollback_target(inp, later_ok=True)
        if inp.policy is not None:
            _checked(
                target.compose,
                inp.policy,
                f"revision {target.revision} no longer passes the tenant's policy: ",
                stored=True,
            )

    @workflow.update(name="cancel")
    async def cancel(self, inp: CancelInput) -> Deployment:
        """Cancel the active deployment; it undoes what it did and ends ``cancelled``."""
        found = self._find(inp.deployment_id)
        assert found is not None
        if self._child is not None:
            try:
                await self._child.signal("cancel", inp.user_id)
            except FailureError as err:
                # The child ended in the moment before: its end is in this same workflow task.
                # The signal's failure used to fail the update as a bare error (HTTP 400).
                raise _refuse(
                    f"deployment {inp.deployment_id} has just ended: nothing to cancel", "Conflict"
                ) from err
        else:
            self._cancel_pending = inp.user_id
        return found.deployment

    @cancel.validator
    def _validate_cancel(self, inp: CancelInput) -> None:
        found = self._find(inp.deployment_id)
        if found is None:
            raise _refuse(f"deployment {inp.deployment_id!r} not found", "NotFound")
        if self.state.active_id != inp.deployment_id:
            raise _refuse(
                f"deployment {inp.deployment_id} is {found.deployment.status.value}: "
                "only a running deployment can be cancelled",
                "Conflict",
            )

    @workflow.update(name="reconcile")
    async def reconcile(self, user_id: str) -> list[DeploymentEvent]:
        """Remove this project's labelled containers that no deployment owns; one event each."""
        self._reconciling = True
        try:
            return await upkeep.reconcile(self.state, user_id)
        finally:
            self._reconciling = False

    @reconcile.validator
    def _validate_reconcile(self, user_id: str) -> None:
        self._refuse_if_active()

    @workflow.signal(name="reconcile_requested")
    def reconcile_requested(self) -> None:
        """Reconcile when no deployment runs (sent by the scheduled ReconcileAll)."""
        self._reconcile_requested = True

    @workflow.query(name="reconcile_log")
    def reconcile_log(self) -> list[DeploymentEvent]:
        """Orphans removed by reconciliation, oldest first (bounded)."""
        return self.state.reconcile_log

    # --- internals -----------------------------------------------------------------------------

    def _find(self, deployment_id: str) -> DeploymentState | None:
        for d in self.state.deployments:
            if d.deployment.id == deployment_id:
                return d
        return None

    def _refuse_if_active(self) -> None:
        if self._reconciling:
            raise _refuse(
                "a reconciliation is running for this project; retry in a moment", "Conflict"
            )
        if self.state.active_id is not None:
            raise _refuse(
                f"deployment {self.state.active_id} is still running for this project; "
                "wait for it or cancel it",
                "Conflict",
            )

    def _rollback_target(self, inp: RollbackInput, *, later_ok: bool) -> RevisionInfo:
        """The revision a rollback brings back.

        ``to_revision``, else: for the serving deployment, the retained revision before it; for
        a later one (it failed, was rolled back or cancelled; with ``rollback_on_failure`` off it
        left what it made), the serving revision, deployed again over what it left (when
        ``later_ok``: rollbacks registered before this rule took the revision before the serving
        one, and took the serving revision down); an earlier deployment is refused.
        """
        s = self.state
        if s.current is None:
            raise _refuse("nothing is serving yet: there is nothing to roll back", "Conflict")
        named = self._find(inp.deployment_id)
        if inp.to_revision is None and named is not None and later_ok:
            if named.deployment.revision > s.current.revision:
                return s.current
            if named.deployment.id != s.current.deployment_id:
                raise _refuse(
                    f"deployment {inp.deployment_id} is older than the serving one "
                    f"({s.current.deployment_id}, revision {s.current.revision}): roll that one "
                    "back, or name a revision (to_revision)",
                    "Conflict",
                )
        if inp.to_revision is not None:
            for rev in s.revisions:
                if rev.revision == inp.to_revision:
                    if rev.revision == s.current.revision:
                        raise _refuse(
                            f"revision {rev.revision} (version {rev.version}) is already serving",
                            "Conflict",
                        )
                    return rev
            kept = ", ".join(str(r.revision) for r in s.revisions) or "none"
            raise _refuse(
                f"revision {inp.to_revision} is not a retained successful revision "
                f"(retained: {kept})",
                "Invalid",
                "body",
                "to_revision",
            )
        earlier = [r for r in s.revisions if r.revision < s.current.revision]
        if not earlier:
            raise _refuse(
                f"no successful revision before the serving one ({s.current.revision}) "
                "to roll back to",
                "Conflict",
            )
        return earlier[-1]

    def _register(
        self,
        *,
        revision: int,
        version: str,
        compose: str,
        user_id: str,
        config: DeploymentConfig,
        rollback_version: str | None = None,
    ) -> Deployment:
        s = self.state
        cfg = DeploymentConfig(**config.model_dump(include=set(DeploymentConfig.model_fields)))
        dep = Deployment(
            id=naming.deployment_id(s.project_id, revision),
            project_id=s.project_id,
            version=version,
            revision=revision,
            strategy=cfg.strategy,
            status=DeploymentStatus.PENDING,
            message="waiting to start",
            rollback_version=rollback_version,
            previous_revision=s.current.revision if s.current else None,
            user_id=user_id,
            tenant_id=s.tenant_id,
            config=cfg,
        )
        s.next_revision = revision + 1
        s.deployments.append(
            DeploymentState(
                deployment=dep,
                events=[
                    DeploymentEvent(
                        event_type=EventType.DEPLOYMENT_REQUESTED,
                        message=(
                            f"rollback to version {rollback_version} requested by {user_id}"
                            if rollback_version
                            else f"deployment requested by {user_id}"
                        ),
                        details={"user": user_id, "phase": "requested"},
                        created_at=workflow.now(),
                    )
                ],
            )
        )
        s.active_compose = compose
        s.active_id = dep.id
        while len(s.deployments) > MAX_DEPLOYMENTS_KEPT:
            s.deployments.pop(0)
        return dep

    async def _run_active(self) -> None:
        s = self.state
        assert s.active_id is not None
        record = self._find(s.active_id)
        assert record is not None
        dep = record.deployment
        compose = s.active_compose
        assert compose is not None
        if self._cancel_pending is not None:
            by, self._cancel_pending = self._cancel_pending, None
            self._finish(
                record, dep, DeploymentStatus.CANCELLED, f"cancelled by {by} before it started",
                compose, user=by,
            )  # fmt: skip
            return
        previous = None
        if s.current is not None:
            previous = RevisionRef(
                revision=s.current.revision,
                version=s.current.version,
                deployment_id=s.current.deployment_id,
                spec=parse_compose(s.current.compose, policy=UNRESTRICTED, stored=True),
            )
        inp = StrategyInput(
            deployment=dep,
            # A rollback's is a revision's (checked when it was deployed); a deploy's was checked
            # by the update's validator.
            target=parse_compose(compose, policy=UNRESTRICTED, stored=True),
            previous=previous,
        )
        # A strategy workflow used to be ended by the server after 7 days, without its undo: a
        # canary held longer stayed routed beside stable until a reconciliation removed it. Its
        # steps have the progress deadline; a hold or a wait for promotion is the operator's.
        unbounded = workflow.patched("strategy-without-execution-timeout")
        try:
            self._child = await workflow.start_child_workflow(
                STRATEGY_WORKFLOWS[dep.strategy],
                inp,
                id=naming.deployment_workflow_id(s.tenant_id, dep.id),
                result_type=DeploymentState,
                parent_close_policy=workflow.ParentClosePolicy.REQUEST_CANCEL,
                search_attributes=sa.typed(
                    (sa.PROJECT_ID, s.project_id),
                    (sa.TENANT_ID, s.tenant_id),
                    (sa.STRATEGY, dep.strategy.value),
                    (sa.VERSION, dep.version),
                    (sa.DEPLOYMENT_STATUS, DeploymentStatus.PENDING.value),
                ),
                static_summary=f"{dep.strategy.value} of {s.project_id} to {dep.version}",
                execution_timeout=None if unbounded else timedelta(days=7),
            )
            if self._cancel_pending is not None:
                by, self._cancel_pending = self._cancel_pending, None
                # A child that ended in its first task (a refused first step) cannot be
                # signalled; its result says how it ended. (This failed the project workflow:
                # its state lost, and ReconcileAll then took its containers for nobody's.)
                with contextlib.suppress(FailureError):
                    await self._child.signal("cancel", by)
            result: DeploymentState = await self._child
        except ChildWorkflowError as err:
            self._child = None
            self._finish(
                record,
                dep,
                DeploymentStatus.FAILED,
                f"strategy workflow failed: {err.cause or err}",
                compose,
            )
            return
        except FailureError as err:  # not started: its id is still running (a reset project)
            self._child = None
            self._finish(
                record, dep, DeploymentStatus.FAILED, f"strategy workflow did not start: {err}",
                compose,
            )  # fmt: skip
            return
        self._child = None
        # Keep the request event, then everything the strategy recorded.
        record.deployment = result.deployment
        record.events = [*record.events, *result.events]
        record.instances = result.instances
        record.routes = result.routes
        made = upkeep.routes_made_by(s, set(s.routes), result)
        s.routes.update(result.routes)
        serving = s.current.revision if s.current else None
        self._finish(record, result.deployment, result.deployment.status, None, compose)
        await upkeep.refresh_serving_instances(
            s, self._find(s.current.deployment_id) if s.current else None, result
        )
        # Runs started before this change kept them listed (and listening, answering 503).
        if made and workflow.patched(upkeep.UNDONE_ROUTES):
            await upkeep.delete_routes(s, record, made, "the deployment that made it was undone")
        await upkeep.remove_network_of_nothing(s, result)
        if result.deployment.status == DeploymentStatus.COMPLETED:
            await upkeep.delete_routes_not_served(self.state, record, self._deletes_routes)
            # What failed deployments before it left (kept while they were the latest, and
            # maybe routed still) is no deployment's now: removed at once, not at the next
            # scheduled pass. Runs started before this change left it to that pass.
            if upkeep.left_by_failed(s, serving) and workflow.patched(upkeep.KEEP_FAILED):
                self._reconcile_requested = True
                self._reconcile_by = f"deployment {dep.id}"

    def _finish(
        self,
        record: DeploymentState,
        dep: Deployment,
        status: DeploymentStatus,
        message: str | None,
        compose: str,
        user: str | None = None,
    ) -> None:
        s = self.state
        if message is not None:
            dep.status = status
            dep.message = message
            dep.completed_at = workflow.now()
            record.events.append(
                DeploymentEvent(
                    event_type=EventType.DEPLOYMENT_CANCELLED
                    if status == DeploymentStatus.CANCELLED
                    else EventType.DEPLOYMENT_FAILED,
                    message=message,
                    details={"user": user} if user is not None else {},
                    created_at=workflow.now(),
                )
            )
        record.deployment = dep
        if status == DeploymentStatus.COMPLETED:
            info = RevisionInfo(
                revision=dep.revision,
                version=dep.version,
                deployment_id=dep.id,
                status=status,
                compose=compose,
                created_at=dep.completed_at or workflow.now(),
            )
            s.current = info
            s.revisions.append(info)
            while len(s.revisions) > s.retained_revisions:
                s.revisions.pop(0)
            # Runs started before this change kept them whatever their size.
            if (
                len(s.revisions) > 1
                and retained_bytes(s.revisions, raw_bytes) > RETAINED_COMPOSE_BYTES
                and workflow.patched("retained-revisions-bytes")
            ):
                s.revisions = retain_within(s.revisions, RETAINED_COMPOSE_BYTES, raw_bytes)
            # Runs started before this change counted them raw (escapes not counted).
            if (
                len(s.revisions) > 1
                and retained_bytes(s.revisions) > RETAINED_COMPOSE_BYTES
                and workflow.patched(RETAINED_JSON)
            ):
                s.revisions = retain_within(s.revisions, RETAINED_COMPOSE_BYTES)
        s.active_id = None
        s.active_compose = None
        # Runs started before this change let the state grow past what a continue-as-new takes.
        if json_bytes(s) > STATE_BUDGET_BYTES and workflow.patched(STATE_BUDGET):
            fit_state(s)
        # Also tells the UI how the project's last deployment ended. It matters for correctness
        # too: a workflow task that ends a deployment must emit a command, or a cold replay may
        # hand the next update over before the child's completion (temporalio/sdk-python#673).
        workflow.upsert_search_attributes(
            [
                sa.DEPLOYMENT_STATUS.value_set(status.value),
                sa.VERSION.value_set(s.current.version if s.current else ""),
            ]
        )
