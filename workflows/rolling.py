"""Rolling update: replace replicas in batches, new ones healthy and routed before old ones go.

Services one at a time in depends_on order. Within a service, batches follow ``max_surge`` /
``max_unavailable`` (see ``workflows.planning``). Each batch: take out old replicas the
unavailability budget allows → start new replicas → wait healthy → switch traffic (the new ones
go into the route, then the old ones drain out, in one router change) → stop the old ones within
their grace period → remove them.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from moorage.compose import ServiceSpec
    from moorage.models import DeploymentState, EventType, ServiceInstance
    from workflows import replicas, steps
    from workflows.inputs import StrategyInput
    from workflows.planning import Batch, SurgeError, plan_batches, resolve_surge
    from workflows.strategy import StrategyWorkflow
    from workflows.tracking import Tracker


def plan_service(inp: StrategyInput, spec: ServiceSpec) -> list[Batch]:
    """The batches for one service.

    Raises:
        ApplicationError: the surge settings resolve to 0 and 0 for this service (non-retryable).
    """
    cfg = inp.deployment.config
    old = _old_spec(inp, spec.name)
    try:
        surge, unavailable = resolve_surge(cfg.max_surge, cfg.max_unavailable, spec.replicas)
        return plan_batches(
            list(range(old.replicas)) if old else [], spec.replicas, surge, unavailable
        )
    except SurgeError as exc:
        raise ApplicationError(
            f"service {spec.name!r}: {exc}", type="Invalid", non_retryable=True
        ) from exc


def _old_spec(inp: StrategyInput, name: str) -> ServiceSpec | None:
    if inp.previous is None or name not in inp.previous.spec.names:
        return None
    return inp.previous.spec.service(name)


@workflow.defn(name="RollingUpdate")
class RollingUpdateWorkflow(StrategyWorkflow):
    """Replace replicas batch by batch; traffic never reaches a replica that is not healthy."""

    @workflow.run
    async def run(self, inp: StrategyInput) -> DeploymentState:
        """Deploy ``inp.target`` by rolling every service."""
        return await self.execute(inp)

    async def flow(self, inp: StrategyInput, t: Tracker) -> None:
        """The rolling-update steps."""
        dep, prev, new = t.deployment, inp.previous, t.deployment.revision
        plans = {spec.name: plan_service(inp, spec) for spec in inp.target.services}
        total = max(1, sum(len(b) for b in plans.values()))
        done = 0
        network = steps.network_input(dep, inp.target)
        # Deployments started before this change ran these steps one after the other, and routed
        # new replicas with a step of their own (route_add) before the old ones drained.
        switch = workflow.patched("rolling-switch-traffic")
        # Deployments started before this change gated each batch's new replicas only, and not
        # all of them again at the end of the service.
        gate_all = workflow.patched("rolling-gate-all-new")
        # Deployments started before this change made sure of the routes beside the names
        # check: a refused deployment had moved a route already (for good, with
        # rollback_on_failure off), or made a new service's.
        if switch and not workflow.patched("rolling-names-before-routes"):
            await steps.side_by_side(
                steps.call("ensure_network", network),
                replicas.ensure_routes(t, inp, self.undo),
            )
        else:
            await steps.call("ensure_network", network)
            await replicas.ensure_routes(t, inp, self.undo)
        t.progress(5, "routes ready")

        for spec in inp.target.services:
            old = _old_spec(inp, spec.name)
            batches = plans[spec.name]
            t.event(
                EventType.SERVICE_UPDATING,
                f"updating {spec.name}: {len(batches)} batch(es), {spec.replicas} replica(s)",
                service=spec.name,
                batches=[b.model_dump() for b in batches],
            )
            started: list[int] = []
            for number, batch in enumerate(batches, start=1):
                # New replicas that replace old ones on the same route take the traffic in the
                # drain of the old ones: one router change per batch.
                routed_in = (
                    replicas.route_servers(dep, spec, new, batch.start)
                    if switch
                    and batch.start
                    and batch.stop_after
                    and old is not None
                    and old.route_port() is not None
                    and spec.route_port() is not None
                    else None
                )
                if old is not None and prev is not None:
                    await replicas.take_out(
                        t,
                        self.undo,
                        old,
                        prev.revision,
                        prev.version,
                        prev.deployment_id,
                        batch.stop_first,
                    )
                if batch.start:
                    await replicas.bring_up(
                        t,
                        self.undo,
                        spec,
                        new,
                        batch.start,
                        route=routed_in is None,
                        serving=started if gate_all else None,
                    )
                    started += batch.start
                if old is not None and prev is not None:
                    await replicas.take_out(
                        t,
                        self.undo,
                        old,
                        prev.revision,
                        prev.version,
                        prev.deployment_id,
                        batch.stop_after,
                        routed_in,
                    )
                done += 1
                t.progress(
                    5 + 85 * done // total,
                    f"{spec.name}: batch {number}/{len(batches)} done "
                    f"(new {batch.start}, old out {batch.stop_first + batch.stop_after})",
                )
            if gate_all and started:
                # A new replica that died after its own gate (in a later batch's switch, or the
                # last batch's stop of the old one) fails the deployment here, not after it.
                await replicas.gate_healthy(t, new, spec, started, again=True)
            t.event(EventType.SERVICE_UPDATED, f"{spec.name} updated", service=spec.name)

        # Services the new revision no longer has go last, once everything new serves.
        if prev is not None:
            for old in reversed(prev.spec.services):
                if old.name not in inp.target.names:
                    await replicas.take_out(
                        t,
                        self.undo,
                        old,
                        prev.revision,
                        prev.version,
                        prev.deployment_id,
                        list(range(old.replicas)),
                    )
                    t.event(EventType.SERVICE_REMOVED, f"{old.name} removed", service=old.name)

        instances = await steps.call(
            "list_containers", steps.selector(dep, new), result_type=list[ServiceInstance]
        )
        t.instances(instances)
        t.event(EventType.INSTANCES_RECORDED, f"{len(instances)} instances recorded")
        t.progress(95, "instances recorded")
