"""Recreate: stop every old container, then start the new revision.

Progress points: 20 old stopped → 40 old removed → 60 new started → 80 new healthy →
90 instances recorded → 100 completed. The old and the new revision never run at the same time.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.inputs import ContainerSelector
    from moorage.models import DeploymentState, EventType, ServiceInstance
    from workflows import replicas, steps
    from workflows.inputs import StrategyInput
    from workflows.strategy import StrategyWorkflow
    from workflows.tracking import Tracker


STOPS_LEFTOVERS = "recreate-stops-leftovers"
"""Patch: a recreate stops every running container of the project before it starts, not only the
serving revision's."""


@workflow.defn(name="Recreate")
class RecreateWorkflow(StrategyWorkflow):
    """Stop all old, start all new."""

    @workflow.run
    async def run(self, inp: StrategyInput) -> DeploymentState:
        """Deploy ``inp.target`` by recreating every service."""
        return await self.execute(inp)

    async def flow(self, inp: StrategyInput, t: Tracker) -> None:
        """The Recreate steps."""
        dep, prev, new = t.deployment, inp.previous, t.deployment.revision
        cfg = dep.config
        await steps.call("ensure_network", steps.network_input(dep, inp.target))
        await replicas.ensure_routes(t, inp, self.undo)

        if prev is not None:
            # Dependents stop first; restoring (the undo) goes in start order.
            for svc in reversed(prev.spec.services):
                all_slots = list(range(svc.replicas))
                if svc.route_port() is not None:
                    self.undo.push(
                        f"route {svc.name} (revision {prev.revision}) again",
                        "route_add",
                        replicas.route_servers(dep, svc, prev.revision, all_slots),
                    )
                self.undo.push_wait_healthy(
                    f"wait for restored {svc.name} (revision {prev.revision})",
                    replicas.restore_health_input(
                        cfg, steps.selector(dep, prev.revision, svc.name), svc.replicas, svc
                    ),
                )
                self.undo.push(
                    f"restore {svc.name} (revision {prev.revision})",
                    "start_service",
                    replicas.start_input(
                        dep,
                        prev.revision,
                        prev.version,
                        prev.deployment_id,
                        svc,
                        list(range(svc.replicas)),
                    ),
                    replicas.START_TIMEOUT,
                )
                t.event(
                    EventType.SERVICE_STOPPING,
                    f"stopping {svc.name} (revision {prev.revision})",
                    service=svc.name,
                )
                await replicas.route_remove(dep, svc, prev.revision, all_slots)
                stopped = await replicas.stop_containers(
                    steps.selector(dep, prev.revision, svc.name), svc.stop_grace_period_s
                )
                t.event(
                    EventType.SERVICE_STOPPED,
                    f"stopped {svc.name}",
                    service=svc.name,
                    containers=stopped,
                )
        if workflow.patched(STOPS_LEFTOVERS):
            # What a failed deployment left (rollback_on_failure off: kept for inspection) ran on
            # beside the new revision: two databases on one volume. Stopped, not removed (still
            # there to inspect, until a reconciliation; not restored by the undo).
            services = [*(prev.spec.services if prev else []), *inp.target.services]
            left = await replicas.stop_containers(
                ContainerSelector(tenant=dep.tenant_id, project=dep.project_id),
                max((s.stop_grace_period_s for s in services), default=10.0),
            )
            if left:
                t.event(
                    EventType.SERVICE_STOPPED,
                    f"stopped {len(left)} containers failed deployments left",
                    containers=left,
                )
        t.progress(20, f"revision {prev.revision} stopped" if prev else "nothing to stop")

        if prev is not None:
            removed = await replicas.remove_containers(steps.selector(dep, prev.revision))
            t.event(
                EventType.SERVICE_REMOVED,
                f"removed {len(removed)} old containers",
                containers=removed,
            )
        t.progress(40, "old containers removed")

        self.undo.push(f"remove revision {new}", "remove_containers", steps.selector(dep, new))
        for svc in inp.target.services:
            if svc.route_port() is not None:
                self.undo.push(
                    f"take {svc.name} (revision {new}) out of the route",
                    "route_remove",
                    replicas.route_servers(dep, svc, new, list(range(svc.replicas))),
                )
        gated: set[str] = set()
        for svc in inp.target.services:
            t.event(
                EventType.SERVICE_STARTING, f"starting {svc.name} x{svc.replicas}", service=svc.name
            )
            started = await replicas.start_service(
                dep, new, dep.version, dep.id, svc, list(range(svc.replicas))
            )
            t.event(
                EventType.SERVICE_STARTED,
                f"started {svc.name}",
                service=svc.name,
                containers=[i.container_name for i in started],
            )
            if inp.target.depended_on(svc.name):
                # Its dependents start only once it is healthy.
                await replicas.gate_healthy(t, new, svc)
                gated.add(svc.name)
        t.progress(60, f"revision {new} started")

        for svc in inp.target.services:
            if svc.name not in gated:
                await replicas.gate_healthy(t, new, svc)
        for svc in inp.target.services:
            await replicas.route_add(dep, svc, new, list(range(svc.replicas)))
        t.progress(80, f"revision {new} healthy and routed")

        instances = await steps.call(
            "list_containers", steps.selector(dep, new), result_type=list[ServiceInstance]
        )
        t.instances(instances)
        t.event(EventType.INSTANCES_RECORDED, f"{len(instances)} instances recorded")
        t.progress(90, "instances recorded")
