"""The Moorage worker: every workflow and activity on one task queue.

Docker SDK calls block, so activities run on a thread pool. Scale out by starting more workers.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from activities.docker_executor import DockerExecutor
from moorage.settings import Settings, get_settings
from moorage.temporal import connect
from workflows.project import ProjectWorkflow
from workflows.recreate import RecreateWorkflow

WORKFLOWS = [ProjectWorkflow, RecreateWorkflow]


def build_worker(
    client: Client,
    task_queue: str,
    executor: DockerExecutor | None = None,
    activity_threads: int = 32,
) -> Worker:
    """A worker for every Moorage workflow and the Docker activities."""
    executor = executor or DockerExecutor()
    return Worker(
        client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=executor.activities(),
        activity_executor=ThreadPoolExecutor(max_workers=activity_threads),
        max_concurrent_activities=activity_threads,
        # Heartbeats carry cancellation to activities: send them often enough that a cancel
        # reaches a health wait within ~2 s.
        max_heartbeat_throttle_interval=timedelta(seconds=2),
        default_heartbeat_throttle_interval=timedelta(seconds=2),
    )


async def run_worker(settings: Settings | None = None) -> None:
    """Connect and run the worker until cancelled."""
    settings = settings or get_settings()
    client = await connect(settings)
    worker = build_worker(client, settings.task_queue)
    print(
        f"moorage worker: task queue {settings.task_queue!r} on {settings.temporal_address}",
        flush=True,
    )
    await worker.run()


if __name__ == "__main__":
    asyncio.run(run_worker())
