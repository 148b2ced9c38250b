"""Blue-green: a whole green stack next to blue, verified, then traffic switched at once.

Progress points: 20 green started → 50 green healthy (preview routes up) → promotion (automatic,
or the ``promote`` update before ``blue_green_timeout``) → 70 traffic switched and verified →
scale-down delay → 80 blue stopped → blue removed → 90 instances recorded → 100.
"""

from __future__ import annotations

import asyncio
import functools
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.inputs import RouteInput
    from moorage.compose.models import PREVIEW_PREFIX
    from moorage.models import DeploymentState, EventType, RouteInfo, ServiceInstance
    from workflows import replicas, steps
    from workflows.inputs import SteerInput, StrategyInput
    from workflows.strategy import StrategyWorkflow
    from workflows.tracking import Tracker


PROMOTE_AT_TIMEOUT = "bluegreen-promote-at-timeout"
"""Patch: a promote that came in the task the promotion's timeout fired in goes on."""

UNLIST_PREVIEW = "bluegreen-undo-unlists-preview"
"""Patch: an undone blue-green no longer lists the preview URLs it dropped."""

GATE_AT_SWITCH = "bluegreen-gate-at-switch"
"""Patch: after a wait for promotion, green's replicas are checked again before the switch."""

VERIFY_MISSES = 3
"""A green replica not ready at this many checks in a row fails the verify after the switch at
once (Docker's own default retries before ``unhealthy``); it waited out the whole health window."""


def preview_key(service: str) -> str:
    """The key of a service's preview URL among a deployment's (and a project's) routes."""
    return f"{service}:preview"


@workflow.defn(name="BlueGreen")
class BlueGreenWorkflow(StrategyWorkflow):
    """Green next to blue; switch when verified and promoted; retire blue."""

    def __init__(self) -> None:
        super().__init__()
        self._waiting_promotion = False
        self._promoted_by: str | None = None
        self._keeping_blue = False
        self._verifying = False

    @property
    def holding(self) -> bool:
        """Promotion, ``post_switch_verify`` or the scale-down delay: waits the deadline skips."""
        return (
            (self._waiting_promotion and self._promoted_by is None)
            or self._verifying
            or self._keeping_blue
        )

    @workflow.run
    async def run(self, inp: StrategyInput) -> DeploymentState:
        """Deploy ``inp.target`` as a green stack."""
        return await self.execute(inp)

    @workflow.update(name="promote")
    def promote(self, inp: SteerInput) -> str:
        """Switch traffic to green now."""
        self._promoted_by = inp.user_id
        assert self.tracker is not None
        self.tracker.event(EventType.PROMOTED, f"promoted by {inp.user_id}", user=inp.user_id)
        return "promoted: switching traffic to green"

    @promote.validator
    def _validate_promote(self, inp: SteerInput) -> None:
        if not self._waiting_promotion or self._promoted_by is not None:
            status = self.tracker.deployment.status.value if self.tracker else "pending"
            raise ApplicationError(
                f"nothing to promote: the deployment is {status} and not waiting for promotion",
                type="Conflict",
            )
        why = self.steps_stopped()
        if why:
            raise ApplicationError(
                f"cannot promote: {why}; the deployment is being undone", type="Conflict"
            )

    async def flow(self, inp: StrategyInput, t: Tracker) -> None:
        """The blue-green steps."""
        dep, prev, green = t.deployment, inp.previous, t.deployment.revision
        cfg = dep.config
        logged = workflow.patched(replicas.STEP_EVENTS)
        await steps.call("ensure_network", steps.network_input(dep, inp.target))
        await replicas.ensure_routes(t, inp, self.undo)

        self.undo.push(
            f"remove green (revision {green})", "remove_containers", steps.selector(dep, green)
        )
        # Deployments started before this change started every green service before any was
        # healthy: a dependent that needs its dependency at start failed its gate.
        in_order = workflow.patched("bluegreen-dependencies-first")
        gated: set[str] = set()
        for spec in inp.target.services:
            await replicas.start_new(
                t, green, spec, list(range(spec.replicas)), "green ", logged=logged
            )
            if in_order and inp.target.depended_on(spec.name):
                await replicas.gate_healthy(t, green, spec)  # before its dependents start
                gated.add(spec.name)
        t.event(
            EventType.GREEN_DEPLOYMENT_STARTED,
            f"green stack (revision {green}) started next to blue",
            services=inp.target.names,
        )
        t.progress(20, "green started")

        for spec in inp.target.services:
            if spec.name not in gated:
                await replicas.gate_healthy(t, green, spec)
        previews = await self._preview(t, inp)
        t.progress(
            50, "green healthy; previews: " + ", ".join(f"{k} {v}" for k, v in previews.items())
        )

        timeout_s = cfg.blue_green_timeout
        if not cfg.auto_promote:
            self._waiting_promotion = True
            t.progress(50, f"waiting for promotion (at most {cfg.blue_green_timeout}s)")
            try:
                await workflow.wait_condition(
                    lambda: self._promoted_by is not None,
                    timeout=timedelta(seconds=cfg.blue_green_timeout),
                )
            except TimeoutError:
                # A promote that came in the task the timer fired in was answered "switching to
                # green": it goes on so. Runs started before this change rolled back then.
                if self._promoted_by is None or not workflow.patched(PROMOTE_AT_TIMEOUT):
                    raise ApplicationError(
                        f"not promoted within blue_green_timeout ({cfg.blue_green_timeout}s): "
                        "green removed, blue untouched",
                        {"reason": f"not promoted within blue_green_timeout ({timeout_s}s)"},
                        type="PromotionTimeout",
                        non_retryable=True,
                    ) from None
            finally:
                self._waiting_promotion = False
            # The wait may have lasted hours: a replica that died or failed its probe meanwhile
            # took traffic at the switch (runs started before this change switched unchecked).
            if workflow.patched(GATE_AT_SWITCH):
                for spec in inp.target.services:
                    await replicas.gate_healthy(t, green, spec, again=True)

        # Switch: green in, blue out. The undo puts blue back before it takes green out.
        for spec in inp.target.services:
            all_slots = list(range(spec.replicas))
            if spec.route_port() is not None:
                self.undo.push(
                    f"take green {spec.name} out of the route",
                    "route_remove",
                    replicas.route_servers(dep, spec, green, all_slots),
                )
            await replicas.route_add(dep, spec, green, all_slots)
        if prev is not None:
            for old in prev.spec.services:
                old_slots = list(range(old.replicas))
                if old.route_port() is not None:
                    self.undo.push(
                        f"route blue {old.name} again",
                        "route_add",
                        replicas.route_servers(dep, old, prev.revision, old_slots),
                    )
                await replicas.route_remove(dep, old, prev.revision, old_slots)
        t.event(
            EventType.TRAFFIC_SWITCHED, f"traffic on green (revision {green})", by=self._promoted_by
        )

        # Verify after the switch: green must stay healthy a while, or traffic goes back to blue.
        # A declared wait, as the scale-down delay: the progress deadline does not count it
        # (deployments started before this change failed when it outlasted the deadline).
        self._verifying = workflow.patched("bluegreen-verify-holds")
        try:
            for spec in inp.target.services:
                verify = replicas.health_input(
                    cfg, steps.selector(dep, green, spec.name), spec.replicas, spec
                )
                verify.delay_s = 0
                verify.min_ready_s = max(verify.min_ready_s, cfg.post_switch_verify)
                verify.fail_after = VERIFY_MISSES
                await replicas.wait_healthy(verify)
        finally:
            self._verifying = False
        t.progress(70, "traffic switched and verified")

        if prev is not None:
            if cfg.scale_down_delay > 0:
                t.progress(70, f"keeping blue for {cfg.scale_down_delay:g}s (scale-down delay)")
                self._keeping_blue = True
                try:
                    await asyncio.sleep(cfg.scale_down_delay)
                finally:
                    self._keeping_blue = False
            for old in reversed(prev.spec.services):
                old_slots = list(range(old.replicas))
                self.undo.push_wait_healthy(
                    f"wait for restored blue {old.name}",
                    replicas.restore_health_input(
                        cfg, steps.selector(dep, prev.revision, old.name), old.replicas, old
                    ),
                )
                self.undo.push(
                    f"restore blue {old.name}",
                    "start_service",
                    replicas.start_input(
                        dep, prev.revision, prev.version, prev.deployment_id, old, old_slots
                    ),
                    replicas.START_TIMEOUT,
                )
                stopped = await replicas.stop_containers(
                    steps.selector(dep, prev.revision, old.name), old.stop_grace_period_s
                )
                if logged:
                    t.event(
                        EventType.SERVICE_STOPPED,
                        f"stopped blue {old.name} (revision {prev.revision})",
                        service=old.name,
                        containers=stopped,
                    )
            t.progress(80, "blue stopped")
            removed = await replicas.remove_containers(steps.selector(dep, prev.revision))
            if logged:
                t.event(
                    EventType.SERVICE_REMOVED,
                    f"removed {len(removed)} blue containers (revision {prev.revision})",
                    containers=removed,
                )
        await self._drop_previews(t, inp)

        instances = await steps.call(
            "list_containers", steps.selector(dep, green), result_type=list[ServiceInstance]
        )
        t.instances(instances)
        t.event(EventType.INSTANCES_RECORDED, f"{len(instances)} instances recorded")
        t.progress(90, "instances recorded")

    async def _preview(self, t: Tracker, inp: StrategyInput) -> dict[str, str]:
        """A preview route per routed service that reaches green only."""
        dep, green = t.deployment, t.deployment.revision
        previews = {}
        for spec in inp.target.services:
            port = spec.route_port()
            if port is None:
                continue
            name = PREVIEW_PREFIX + spec.name
            info: RouteInfo = await steps.call(
                "ensure_route",
                RouteInput(
                    tenant=dep.tenant_id,
                    project=dep.project_id,
                    service=name,
                    container_port=port.key,
                    mode=spec.route_mode,
                ),
                result_type=RouteInfo,
            )
            servers = replicas.route_servers(dep, spec, green, list(range(spec.replicas)))
            servers.service = name
            self.undo.push(
                f"drop preview of {spec.name}",
                "route_remove",
                servers,
                then=functools.partial(self._unlist_preview, t, spec.name),
            )
            await steps.call("route_add", servers, result_type=list[str])
            previews[spec.name] = info.url
            t.state.routes[preview_key(spec.name)] = info.url
        return previews

    @staticmethod
    def _unlist_preview(t: Tracker, service: str, _: object) -> None:
        """The undo dropped a preview: its URL leaves the deployment's routes.

        Runs started before this change listed it after the deployment was undone (503).
        """
        if workflow.patched(UNLIST_PREVIEW):
            t.state.routes.pop(preview_key(service), None)

    async def _drop_previews(self, t: Tracker, inp: StrategyInput) -> None:
        dep, green = t.deployment, t.deployment.revision
        for spec in inp.target.services:
            if spec.route_port() is None:
                continue
            servers = replicas.route_servers(dep, spec, green, list(range(spec.replicas)))
            servers.service = PREVIEW_PREFIX + spec.name
            await steps.call("route_remove", servers, result_type=list[str])
            t.state.routes.pop(preview_key(spec.name), None)
