"""The Moorage worker: every workflow and activity on one task queue.

Docker SDK calls block, so activities run on a thread pool. Scale out by starting more workers.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

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
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.worker import Worker

from activities.docker_executor import DockerExecutor
from activities.haproxy import HAProxyBackend
from activities.inputs import ListLabelledInput
from activities.nginx import NginxBackend
from activities.proxy import ProxyBackend, ProxyUnavailable, RouterError
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
    graceful_shutdown: timedelta = timedelta(0),
) -> Worker:
    """A worker for every Moorage workflow, the Docker activities and the router activities.

    ``graceful_shutdown``: how long a shutdown lets running activities finish before it cancels
    them (a cancelled step fails as the worker's shutdown, and is retried on another worker).
    """
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
        graceful_shutdown_timeout=graceful_shutdown,
    )


async def ensure_reconcile_schedule(client: Client, settings: Settings) -> bool:
    """Make sure of the schedule that runs ReconcileAll every ``reconcile_every`` seconds.

    One that exists with another interval or task queue is brought to these settings (it was
    kept as first made: a changed ``MOORAGE_RECONCILE_EVERY`` did nothing, and a changed
    ``MOORAGE_TASK_QUEUE`` left it starting passes on a queue no worker polls). With 0, this
    worker makes none and leaves one that exists alone (workers of one installation may differ).

    Returns:
        True when this call created or changed it, False when it was as asked or is switched off.
    """
    if settings.reconcile_every <= 0:
        return False
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            "ReconcileAll", ListLabelledInput(), id=WORKFLOW_ID, task_queue=settings.task_queue
        ),
        spec=ScheduleSpec(
            intervals=[ScheduleIntervalSpec(every=timedelta(seconds=settings.reconcile_every))]
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    try:
        await client.create_schedule(SCHEDULE_ID, schedule)
    except ScheduleAlreadyRunningError:
        pass
    else:
        return True
    handle = client.get_schedule_handle(SCHEDULE_ID)
    found = (await handle.describe()).schedule
    action = found.action
    if (
        isinstance(action, ScheduleActionStartWorkflow)
        and action.task_queue == settings.task_queue
        and [i.every for i in found.spec.intervals] == [schedule.spec.intervals[0].every]
    ):
        return False

    def bring(update: ScheduleUpdateInput) -> ScheduleUpdate:
        # Its action and spec only: a pause and note an operator set stay.
        found = update.description.schedule
        found.action, found.spec = schedule.action, schedule.spec
        return ScheduleUpdate(schedule=found)

    await handle.update(bring)
    return True


GRACEFUL_SHUTDOWN = timedelta(seconds=5)
"""How long a worker told to stop lets running steps finish (``moorage dev`` waits 10 s)."""

FORCED_EXIT = GRACEFUL_SHUTDOWN + timedelta(seconds=10)
"""A shutdown still going on this long after the signal ends with the process (as a second
signal does): its steps time out on their heartbeats and are retried on another worker."""


def refuse_router_dir(path: Path) -> None:
    """Refuse a router directory the proxy's config cannot hold (it goes there unquoted).

    A space made every router step fail to start the proxy, and the worker's start with a
    traceback.

    Raises:
        ValueError: naming the setting.
    """
    if any(c.isspace() or c in "\"';#{}\\" for c in str(path)):
        raise ValueError(
            f"MOORAGE_ROUTER_DIR {str(path)!r} (by default under MOORAGE_DATA_DIR): the router's "
            "directory may not hold spaces, quotes, '\\', ';', '#', '{' or '}' (it goes into the "
            "proxy's config)"
        )


def force_exit(why: str) -> None:
    """End the process now, without the rest of the shutdown."""
    print(f"moorage worker: {why}: exiting now", file=sys.stderr, flush=True)
    os._exit(1)


async def run_worker(settings: Settings | None = None) -> None:
    """Connect and run the worker until SIGTERM or SIGINT, then shut it down gracefully.

    A graceful shutdown tells the Temporal server the worker is gone, so the next workflow task
    of a workflow it ran goes to another worker at once, not after its sticky queue's 10 s
    timeout (a worker killed outright still costs that). Steps still running after
    :data:`GRACEFUL_SHUTDOWN` are cancelled, and retried on another worker.
    """
    settings = settings or get_settings()
    try:
        replica_ports = settings.replica_port_range()  # and MOORAGE_ROUTE_PORTS
        refuse_router_dir(settings.resolved_router_dir())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from exc
    client = await connect(settings)
    executor = DockerExecutor(replica_ports=replica_ports, instance=settings.instance)
    router = build_router(settings, executor.client)
    # The proxy serves the routes even before the first deployment touches them.
    try:
        left_out = router.ensure_running()
        if left_out:
            print(
                f"moorage worker: {router.backend.name} serves without the routes "
                f"{', '.join(left_out)}: their ports are taken by another process; each comes "
                "back once its port is free, at the next deployment of its project or any "
                "other router change",
                file=sys.stderr,
                flush=True,
            )
    except ProxyUnavailable as exc:  # run outside Moorage, not up yet: router steps retry
        print(f"moorage worker: {exc}", file=sys.stderr, flush=True)
    except RouterError as exc:
        # It did not start from the routes on disk, though their ports are free: the router
        # steps retry the start; every other step, and the workflows, go on. The worker used
        # to end here with a traceback, and no deployment of any project moved.
        print(
            f"moorage worker: {router.backend.name} did not start, router steps retry: {exc}",
            file=sys.stderr,
            flush=True,
        )
    worker = build_worker(
        client, settings.task_queue, executor, router, graceful_shutdown=GRACEFUL_SHUTDOWN
    )
    await ensure_reconcile_schedule(client, settings)
    stop = asyncio.Event()
    received: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        if stop.is_set():
            force_exit(f"{sig.name} again")
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    async with worker:
        print(
            f"moorage worker: task queue {settings.task_queue!r} on {settings.temporal_address}",
            flush=True,
        )
        await stop.wait()
        print(f"moorage worker: {received[0].name}: shutting down", flush=True)
        # A step blocked in a call to the engine (a pull, a stop's grace period) only sees its
        # cancel when the call returns: the shutdown waits for it, but not for ever.
        loop.call_later(FORCED_EXIT.total_seconds(), force_exit, "shutdown too slow")
    print("moorage worker: stopped", flush=True)


def main(settings: Settings | None = None) -> None:
    """Run the worker (:func:`run_worker`) in this process, then end the process.

    After the graceful shutdown nothing is left to tear down. The SDK's core (Rust) keeps
    threads of its own, and CPython's teardown beside them once ended a clean shutdown in
    SIGSEGV (exit -11, seen once in CI): the process ends without it. An error (SystemExit 2,
    Temporal not reachable) leaves as an exception, before that.
    """
    faulthandler.enable()  # a crash in native code (the SDK's core, a library) says where
    asyncio.run(run_worker(settings))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
