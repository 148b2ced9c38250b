"""What one durable step costs: a workflow of no-op activities, one after the other.

Prints per step (one activity and the workflow task that follows it): wall time, and the CPU the
Temporal dev server and this process (the worker) spent, against a baseline in the same process:
the same no-op called directly. It is the fixed price Moorage pays per activity, whatever the
activity does (see the README's benchmark section).

Usage: ``.venv/bin/python bench/step_cost.py [--steps N] [--repeat N]`` (starts its own dev server).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from temporalio.contrib.pydantic import pydantic_data_converter  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402
from temporalio.worker import Worker  # noqa: E402

from bench.rolling import CpuMeter  # noqa: E402
from bench.step_cost_workflow import NoOpSteps, noop  # noqa: E402


async def one_run(
    env: WorkflowEnvironment, meter: CpuMeter, steps: int
) -> tuple[float, float, float]:
    """Wall, server CPU and own CPU per step (ms), on a fresh worker and task queue."""
    queue = f"steps-{uuid.uuid4().hex[:6]}"
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[NoOpSteps],
        activities=[noop],
        activity_executor=ThreadPoolExecutor(8),
    ):
        with meter.measure() as cpu:
            t0 = time.monotonic()
            await env.client.execute_workflow(
                NoOpSteps.run, steps, id=f"steps-{uuid.uuid4().hex}", task_queue=queue
            )
            wall = time.monotonic() - t0
    return 1000 * wall / steps, 1000 * cpu[0] / steps, 1000 * cpu[1] / steps


def direct(steps: int) -> float:
    """The same no-ops called directly: ms per step."""
    t0 = time.monotonic()
    for i in range(steps):
        noop(i)
    return 1000 * (time.monotonic() - t0) / steps


async def main(steps: int, repeat: int) -> None:
    temporal = Path(sys.executable).parent / "temporal"
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(temporal if temporal.exists() else shutil.which("temporal")),
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
    )
    try:
        meter = CpuMeter(env.client.service_client.config.target_host.rsplit(":", 1)[1])
        runs = []
        for _ in range(repeat):
            runs.append(await one_run(env, meter, steps))
            print(
                "run: wall {:.1f} ms, server CPU {:.1f} ms, worker CPU {:.1f} ms per step".format(
                    *runs[-1]
                )
            )
    finally:
        await env.shutdown()
    wall, server, own = (statistics.median(r[i] for r in runs) for i in range(3))
    base = direct(steps)
    print(f"{steps} no-op activities in a row, median of {repeat} run(s), per step:")
    print(f"  wall {wall:.1f} ms (direct call: {base:.4f} ms)")
    print(f"  CPU: Temporal dev server {server:.1f} ms, worker process {own:.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.steps < 1 or args.repeat < 1:
        parser.error("--steps and --repeat: at least 1")
    asyncio.run(main(args.steps, args.repeat))
