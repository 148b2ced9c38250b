"""The Moorage worker: every workflow and activity on one task queue.

Docker SDK calls block, so activities run on a thread pool. Scale out by starting more workers.
"""

from __future__ import annotations

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import docker
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)
from temporalio.worker import Worker

from activities.docker_executor import DockerExecutor
from activities.haproxy import HAProxyBackend
from activities.inputs import ListLabelledInput
from activities.nginx import NginxBackend
from activities.proxy import ProxyBackend, ProxyUnavailable
from activities.router import TrafficRouter
from moorage.settings import Settings, get_settings
from moorage.temporal import connect
from workflows.bluegreen import BlueGreenWorkflow
from workflows.canary import CanaryWorkflow
from workflows.project import ProjectWorkflow
from workflows.reconcile import SCHEDULE_ID, WORKFLOW_ID, ReconcileAllWorkflow
from workflows.recreate import RecreateWorkflow
from workflows.rolling import RollingUpdateWorkflow

WORKFLOWS = [
    ProjectWorkflow,
    RecreateWorkflow,
    RollingUpdateWorkflow,
    BlueGreenWorkflow,
    CanaryWorkflow,
    ReconcileAllWorkflow,
]


def build_router(
    settings: Settings, docker_client: docker.DockerClient | None = None
) -> TrafficRouter:
    """The traffic router the settings name (HAProxy by default, or nginx)."""
    directory = settings.resolved_router_dir()
    backend: ProxyBackend
    if settings.router == "nginx":
        backend = NginxBackend(directory, settings.router_bind, settings.drain_timeout)
    else:
        backend = HAProxyBackend(
            directory, settings.router_bind, settings.drain_timeout, settings.router_managed
        )
    return TrafficRouter(
        backend,
        docker_client,
        settings.port_range(),
        settings.drain_timeout,
        settings.replica_port_range(),
    )


def build_worker(
    client: Client,
    task_queue: str,
    executor: DockerExecutor | None = None,
    router: TrafficRouter | None = None,
    activity_threads: int = 32,
) -> Worker:
    """A worker for every Moorage workflow, the Docker activities and the router activities."""
    executor = executor or DockerExecutor()
    router = router or build_router(get_settings(), executor.client)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=[*executor.activities(), *router.activities()],
        activity_executor=ThreadPoolExecutor(max_workers=activity_threads),
        max_concurrent_activities=activity_threads,
        # Heartbeats carry cancellation to activities: send them often enough that a cancel
        # reaches a health wait within ~2 s.
        max_heartbeat_throttle_interval=timedelta(seconds=2),
        default_heartbeat_throttle_interval=timedelta(seconds=2),
    )


async def ensure_reconcile_schedule(client: Client, settings: Settings) -> bool:
    """Create the schedule that runs ReconcileAll every ``reconcile_every`` seconds (once).

    Returns:
        True when this call created it, False when it existed already or is switched off (0).
    """
    if settings.reconcile_every <= 0:
        return False
    try:
        await client.create_schedule(
            SCHEDULE_ID,
            Schedule(
                action=ScheduleActionStartWorkflow(
                    "ReconcileAll",
                    ListLabelledInput(),
                    id=WORKFLOW_ID,
                    task_queue=settings.task_queue,
                ),
                spec=ScheduleSpec(
                    intervals=[
                        ScheduleIntervalSpec(every=timedelta(seconds=settings.reconcile_every))
                    ]
                ),
                policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
            ),
        )
    except ScheduleAlreadyRunningError:
        return False
    return True


async def run_worker(settings: Settings | None = None) -> None:
    """Connect and run the worker until cancelled."""
    settings = settings or get_settings()
    try:
        replica_ports = settings.replica_port_range()  # and MOORAGE_ROUTE_PORTS
    except ValueError as exc:
        print(f"moorage worker: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from exc
    client = await connect(settings)
    executor = DockerExecutor(replica_ports=replica_ports)
    router = build_router(settings, executor.client)
    # The proxy serves the routes even before the first deployment touches them.
    try:
        router.ensure_running()
    except ProxyUnavailable as exc:  # run outside Moorage, not up yet: router steps retry
        print(f"moorage worker: {exc}", file=sys.stderr, flush=True)
    worker = build_worker(client, settings.task_queue, executor, router)
    await ensure_reconcile_schedule(client, settings)
    print(
        f"moorage worker: task queue {settings.task_queue!r} on {settings.temporal_address}",
        flush=True,
    )
    await worker.run()


if __name__ == "__main__":
    asyncio.run(run_worker())
