"""The workflow and activity of bench/step_cost.py (a module of their own for the sandbox)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow


@activity.defn
def noop(value: int) -> int:
    """Does nothing: what is left is the cost of the step."""
    return value


@workflow.defn
class NoOpSteps:
    """``steps`` no-op activities, one after the other."""

    @workflow.run
    async def run(self, steps: int) -> int:
        total = 0
        for i in range(steps):
            total += await workflow.execute_activity(
                noop, i, start_to_close_timeout=timedelta(seconds=30)
            )
        return total
