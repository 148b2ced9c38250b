"""Canary: the new revision next to the stable one, traffic shifted by router weights in steps.

Config ``canary_steps``, e.g. ``[{"weight": 10}, {"pause": 30}, {"weight": 50},
{"pause": "manual"}, {"weight": 100}]``. A weight step sets the share of requests the canary gets
(HAProxy ``set weight`` at run time; nginx upstream weights); health gates every step. Updates:
``pause`` (hold at the next step), ``resume``, ``promote`` (skip the remaining steps) and ``abort``
(traffic back to stable, canary removed, status ``rolled_back``).
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.inputs import RouteWeightsInput
    from moorage import naming
    from moorage.compose import ServiceSpec
    from moorage.models import CanaryStep, DeploymentState, EventType, ServiceInstance
    from workflows import planning, replicas, steps
    from workflows.inputs import SteerInput, StrategyInput
    from workflows.strategy import StrategyWorkflow
    from workflows.tracking import Tracker

CANARY_ALONE_SERVES = "canary-alone-serves"
"""Patch: a canary with no stable replicas on its route is routed at full weight from the start."""

DEFAULT_STEPS = [
    CanaryStep(weight=10),
    CanaryStep(pause=30),
    CanaryStep(weight=50),
    CanaryStep(weight=100),
]


def _conflict(message: str) -> ApplicationError:
    return ApplicationError(message, type="Conflict")


@workflow.defn(name="Canary")
class CanaryWorkflow(StrategyWorkflow):
    """Shift traffic to the new revision in weighted steps."""

    def __init__(self) -> None:
        super().__init__()
        self._stepping = False
        self._paused_by: str | None = None
        self._resumed = False
        self._promoted_by: str | None = None
        self._done_shifting = False
        self._alone_routed = False
        """A service with no stable replicas was routed at full weight (``canary-alone-serves``)."""

    @workflow.run
    async def run(self, inp: StrategyInput) -> DeploymentState:
        """Deploy ``inp.target`` as a canary."""
        return await self.execute(inp)

    # --- steering ------------------------------------------------------------------------------

    def _require_stepping(self, action: str) -> None:
        if not self._stepping or self._done_shifting:
            status = self.tracker.deployment.status.value if self.tracker else "pending"
            raise _conflict(
                f"cannot {action}: the deployment is {status} and not in its canary steps"
            )
        why = self.steps_stopped()
        if why:
            raise _conflict(f"cannot {action}: {why}; the deployment is being undone")

    @workflow.update(name="pause")
    def pause(self, inp: SteerInput) -> str:
        """Hold before the next step until resumed."""
        self._paused_by = inp.user_id
        self._resumed = False
        assert self.tracker is not None
        self.tracker.event(EventType.PAUSED, f"paused by {inp.user_id}", user=inp.user_id)
        return "paused"

    @pause.validator
    def _validate_pause(self, inp: SteerInput) -> None:
        self._require_stepping("pause")
        if self._paused_by is not None:
            raise _conflict(f"already paused by {self._paused_by}")
        if self._promoted_by is not None:
            # Until the current step ended, a pause was answered "paused", then ignored.
            raise _conflict(
                f"cannot pause: promoted by {self._promoted_by}, all traffic goes to the canary"
            )

    @workflow.update(name="resume")
    def resume(self, inp: SteerInput) -> str:
        """Go on with the steps (also ends a manual or timed pause step)."""
        self._paused_by = None
        self._resumed = True
        assert self.tracker is not None
        self.tracker.event(EventType.RESUMED, f"resumed by {inp.user_id}", user=inp.user_id)
        return "resumed"

    @resume.validator
    def _validate_resume(self, inp: SteerInput) -> None:
        self._require_stepping("resume")
        if self._paused_by is None and not self._in_pause_step:
            raise _conflict("not paused: nothing to resume")

    @workflow.update(name="promote")
    def promote(self, inp: SteerInput) -> str:
        """Skip the remaining steps: all traffic to the new revision."""
        self._promoted_by = inp.user_id
        assert self.tracker is not None
        self.tracker.event(EventType.PROMOTED, f"promoted by {inp.user_id}", user=inp.user_id)
        return "promoted: shifting all traffic to the canary"

    @promote.validator
    def _validate_promote(self, inp: SteerInput) -> None:
        self._require_stepping("promote")
        if self._promoted_by is not None:
            raise _conflict(f"already promoted by {self._promoted_by}")

    @workflow.update(name="abort")
    def abort(self, inp: SteerInput) -> str:
        """Traffic back to stable, canary removed; the deployment ends ``rolled_back``."""
        self.request_abort(inp.user_id)
        return "aborting: traffic back to stable"

    @abort.validator
    def _validate_abort(self, inp: SteerInput) -> None:
        self._require_stepping("abort")

    # --- the steps -------------------------------------------------------------------------------

    _in_pause_step = False

    _held = False
    """Waiting in :meth:`_hold_while_paused` (a pause asked for takes hold at the next step)."""

    @property
    def holding(self) -> bool:
        """Held by an operator's pause, or in a pause step."""
        return self._held or self._in_pause_step

    async def flow(self, inp: StrategyInput, t: Tracker) -> None:
        """The canary steps."""
        dep, prev, new = t.deployment, inp.previous, t.deployment.revision
        plan = dep.config.canary_steps or DEFAULT_STEPS
        logged = workflow.patched(replicas.STEP_EVENTS)
        await steps.call("ensure_network", steps.network_input(dep, inp.target))
        await replicas.ensure_routes(t, inp, self.undo, self._stable_servers(inp))

        # The canary: the new revision's replicas next to stable ones, routed at weight 0.
        for spec in inp.target.services:
            self.undo.push(
                f"remove canary {spec.name}",
                "remove_containers",
                steps.selector(dep, new, spec.name),
            )
            if spec.route_port() is not None:
                self.undo.push(
                    f"take canary {spec.name} out of the route",
                    "route_remove",
                    replicas.route_servers(dep, spec, new, list(range(spec.replicas))),
                )
            await replicas.start_new(
                t, new, spec, list(range(spec.replicas)), "canary ", logged=logged
            )
            await replicas.gate_healthy(t, new, spec)
            if spec.route_port() is not None:
                # With no stable replicas of the service on its route, weight 0 left the route
                # with no server to send to (503) until the first step, for all of a first pause.
                alone = self._stable(inp, spec) is None and workflow.patched(CANARY_ALONE_SERVES)
                self._alone_routed = self._alone_routed or alone
                await steps.call(
                    "route_add",
                    replicas.route_servers(
                        dep, spec, new, list(range(spec.replicas)), weight=100 if alone else 0
                    ),
                    result_type=list[str],
                )
            # Undo of any weight change: stable gets everything again, before the canary goes.
            self.undo.push(
                f"all {spec.name} traffic back to stable",
                "route_weights",
                self._weights(inp, spec, 0),
            )
        t.progress(10, "canary started at weight 0" + self._alone_note(inp))

        # Deployments started before this change waited the health delay and min_ready_seconds
        # again at every step's gate (30 s of delay: 30 s more per step).
        again = workflow.patched("canary-gates-again")
        self._stepping = True
        for number, step in enumerate(plan, start=1):
            await self._hold_while_paused(t, number, len(plan))
            if self._promoted_by is not None:
                break
            label = f"step {number}/{len(plan)}"
            if step.weight is not None:
                for spec in inp.target.services:
                    await replicas.gate_healthy(t, new, spec, again=again)
                    if spec.route_port() is not None:
                        await steps.call(
                            "route_weights",
                            self._weights(inp, spec, step.weight),
                            result_type=dict[str, int],
                        )
                said = f"{label}: canary weight {step.weight}%{self._alone_note(inp)}"
                t.event(EventType.TRAFFIC_SWITCHED, said, weight=step.weight)
                t.progress(10 + 80 * number // len(plan), said)
            else:
                await self._pause_step(t, step, label, 10 + 80 * number // len(plan))
        if (
            self._paused_by is not None
            and self._promoted_by is None
            and workflow.patched("canary-hold-before-full-shift")
        ):
            # Paused during the last step: held before all traffic goes to the canary (the pause
            # used to be answered "paused", then ignored).
            await self._hold_while_paused(t, len(plan), len(plan))
        self._done_shifting = True

        # Full traffic on the canary; stable drained and retired.
        for spec in inp.target.services:
            await replicas.gate_healthy(t, new, spec, again=again)
            if spec.route_port() is not None:
                await steps.call(
                    "route_weights", self._weights(inp, spec, 100), result_type=dict[str, int]
                )
        t.event(
            EventType.TRAFFIC_SWITCHED,
            "canary weight 100%: all traffic on the new revision",
            weight=100,
        )
        if prev is not None:
            for old in reversed(prev.spec.services):
                await replicas.take_out(
                    t,
                    self.undo,
                    old,
                    prev.revision,
                    prev.version,
                    prev.deployment_id,
                    list(range(old.replicas)),
                )
        instances = await steps.call(
            "list_containers", steps.selector(dep, new), result_type=list[ServiceInstance]
        )
        t.instances(instances)
        t.event(EventType.INSTANCES_RECORDED, f"{len(instances)} instances recorded")
        t.progress(95, "instances recorded")

    def _alone_note(self, inp: StrategyInput) -> str:
        """What a weight does not say: routed services with no stable replicas ("" when none).

        Those send the canary all of their traffic, whatever its weight.
        """
        alone = [
            spec.name
            for spec in inp.target.services
            if spec.route_port() is not None and self._stable(inp, spec) is None
        ]
        if not alone or not self._alone_routed:  # (runs before the patch routed them at 0)
            return ""
        return f" ({', '.join(alone)}: no stable replicas, all traffic on the canary)"

    @staticmethod
    def _stable(inp: StrategyInput, spec: ServiceSpec) -> ServiceSpec | None:
        """The serving revision's ``spec`` when it routes the service; None: no stable servers.

        An old revision that did not route it has no servers on the route: the canary is all the
        route will have.
        """
        prev = inp.previous
        old = prev.spec.service(spec.name) if prev and spec.name in prev.spec.names else None
        return old if old is not None and old.route_port() is not None else None

    def _stable_servers(self, inp: StrategyInput) -> dict[str, list[str]]:
        """Service -> the serving revision's replicas on its route, which the weights name."""
        return {
            spec.name: self._stable_names(inp, old)
            for spec in inp.target.services
            if (old := self._stable(inp, spec)) is not None and spec.route_port() is not None
        }

    @staticmethod
    def _stable_names(inp: StrategyInput, old: ServiceSpec) -> list[str]:
        """The server names of the serving revision's replicas of ``old``."""
        dep, prev = inp.deployment, inp.previous
        assert prev is not None
        return [
            naming.container_name(dep.tenant_id, dep.project_id, old.name, prev.revision, s)
            for s in range(old.replicas)
        ]

    def _weights(
        self, inp: StrategyInput, spec: ServiceSpec, canary_weight: int
    ) -> RouteWeightsInput:
        """Server weights giving the canary ``canary_weight`` % of the requests.

        No weights for a service without a route: the undo that sends traffic back to stable is
        pushed for every service, and the router takes no weights as nothing to change.
        """
        dep = inp.deployment
        if spec.route_port() is None:
            return RouteWeightsInput(
                tenant=dep.tenant_id, project=dep.project_id, service=spec.name, weights={}
            )
        weights = {
            naming.container_name(
                dep.tenant_id, dep.project_id, spec.name, dep.revision, s
            ): canary_weight
            for s in range(spec.replicas)
        }
        old = self._stable(inp, spec)
        if old is not None:
            # Per-server weights for the share, whatever the replica counts on either side.
            canary, stable = planning.canary_weights(canary_weight, spec.replicas, old.replicas)
            for name in weights:
                weights[name] = canary
            for name in self._stable_names(inp, old):
                weights[name] = stable
        elif canary_weight == 0:
            # Nothing stable to fall back on: the canary is all there is.
            for name in list(weights):
                weights[name] = 100
        return RouteWeightsInput(
            tenant=dep.tenant_id, project=dep.project_id, service=spec.name, weights=weights
        )

    async def _hold_while_paused(self, t: Tracker, number: int, total: int) -> None:
        if self._paused_by is None:
            return
        t.progress(t.deployment.progress, f"step {number}/{total}: paused by {self._paused_by}")
        self._held = True
        try:
            await workflow.wait_condition(
                lambda: self._paused_by is None or self._promoted_by is not None
            )
        finally:
            self._held = False

    async def _pause_step(self, t: Tracker, step: CanaryStep, label: str, progress: int) -> None:
        self._resumed = False
        self._in_pause_step = True
        try:
            if step.pause == "manual":
                t.progress(progress, f"{label}: paused until resumed or promoted")
                await workflow.wait_condition(
                    lambda: self._resumed or self._promoted_by is not None
                )
                return
            seconds = float(step.pause or 0)
            until = workflow.now() + timedelta(seconds=seconds)
            t.progress(progress, f"{label}: paused {seconds:g}s, until {until:%H:%M:%S}Z")
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: self._resumed or self._promoted_by is not None,
                    timeout=timedelta(seconds=seconds),
                )
        finally:
            self._in_pause_step = False
